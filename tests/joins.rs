//! Joins through the `flow_engine` library: every join type against an independent nested-loop
//! join, with nulls, a skewed key and long strings, unlimited and under budgets small enough to
//! spill partitions (and to join the skewed key in chunks); plus plan-time errors.

mod common;

use arrow::array::{Array, Int64Array};
use common::*;
use flow_engine::{Config, Engine};
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::path::Path;

/// One side's rows: key (nulls; one value for half the rows if asked), a string, an id.
type Rows = Vec<KeyRow>;

/// A join's extra condition on (left id, right id).
type Condition<'a> = &'a dyn Fn(i64, i64) -> bool;

fn side(dir: &Path, name: &str, rows: usize, seed: u64, hot: f64, max_len: usize) -> Rows {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let data: Rows = (0..rows as i64)
        .map(|i| {
            let k = if rng.random_bool(hot) {
                Some(7)
            } else if rng.random_bool(0.1) {
                None
            } else {
                Some(rng.random_range(0..rows as i64 / 2))
            };
            let s = if rng.random_bool(0.05) {
                None
            } else {
                let len = if rng.random_bool(0.02) { 400 } else { rng.random_range(0..max_len) };
                Some((0..len).map(|_| rng.random_range(b'a'..=b'z') as char).collect())
            };
            (k, s, i)
        })
        .collect();
    write_key_rows(&dir.join(format!("{name}.parquet")), &data, 5_000);
    data
}

fn engine(dir: &Path, budget: u64) -> Engine {
    let config = Config::default().with_mem_budget(budget).with_threads(2).with_spill_dir(dir).with_batch_size(1024);
    let mut e = Engine::new(config).unwrap();
    for name in ["l", "r"] {
        e.register(name, dir.join(format!("{name}.parquet")).to_str().unwrap()).unwrap();
    }
    e
}

/// Pairs of (left id, right id) a query returns, sorted; `None` for a null-extended side.
fn pairs(e: &Engine, sql: &str) -> Vec<(Option<i64>, Option<i64>)> {
    let mut out = Vec::new();
    e.sql(sql)
        .unwrap_or_else(|err| panic!("{sql}: {err}"))
        .for_each(|b| {
            let l = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
            let r = b.column(1).as_any().downcast_ref::<Int64Array>().unwrap();
            out.extend(
                (0..b.num_rows()).map(|i| (l.is_valid(i).then(|| l.value(i)), r.is_valid(i).then(|| r.value(i)))),
            );
            Ok(())
        })
        .unwrap_or_else(|err| panic!("{sql}: {err}"));
    assert_eq!(e.pool().reserved(), e.catalog_memory(), "pool back to zero after {sql}: {:?}", e.pool().consumers());
    out.sort_unstable();
    out
}

/// The independent answer: a nested loop over rows grouped by key.
fn expected(
    left: &Rows,
    right: &Rows,
    keep_left: bool,
    keep_right: bool,
    cond: &dyn Fn(i64, i64) -> bool,
) -> Vec<(Option<i64>, Option<i64>)> {
    let mut by_key: HashMap<i64, Vec<i64>> = HashMap::new();
    for (k, _, id) in right {
        if let Some(k) = k {
            by_key.entry(*k).or_default().push(*id);
        }
    }
    let mut right_matched = vec![false; right.len()];
    let mut out = Vec::new();
    for (k, _, lid) in left {
        let mut any = false;
        for &rid in k.and_then(|k| by_key.get(&k)).map(|v| v.as_slice()).unwrap_or(&[]) {
            if cond(*lid, rid) {
                out.push((Some(*lid), Some(rid)));
                right_matched[rid as usize] = true;
                any = true;
            }
        }
        if !any && keep_left {
            out.push((Some(*lid), None));
        }
    }
    if keep_right {
        out.extend(right.iter().filter(|r| !right_matched[r.2 as usize]).map(|r| (None, Some(r.2))));
    }
    out.sort_unstable();
    out
}

#[test]
fn every_join_type_matches_a_nested_loop_spilled_or_not() {
    let dir = tempfile::tempdir().unwrap();
    // Half the right rows (the smaller side, which builds) share key 7, which 12 left rows have:
    // 240K pairs for that key alone, and more build rows for it than fit in the tight budget.
    let mut left = side(dir.path(), "l", 60_000, 1, 0.0, 16);
    let right = side(dir.path(), "r", 40_000, 2, 0.5, 200);
    for l in left.iter_mut().take(12) {
        l.0 = Some(7);
    }
    write_key_rows(&dir.path().join("l.parquet"), &left, 5_000);

    let always = |_: i64, _: i64| true;
    let odd = |l: i64, r: i64| (l + r) % 3 != 0;
    let same_parity = |l: i64, r: i64| l % 2 == r % 2;
    let same_third = |l: i64, r: i64| l % 3 == r % 3;
    let same_tenth = |l: i64, r: i64| l % 10 == r % 10;
    let roomy = engine(dir.path(), 1 << 30);
    // Small enough that the build side (with its strings) spills, and the hot key is joined in chunks.
    let tight = engine(dir.path(), 3 << 20);
    for (join, keep_left, keep_right) in
        [("JOIN", false, false), ("LEFT JOIN", true, false), ("RIGHT JOIN", false, true), ("FULL JOIN", true, true)]
    {
        let cases: Vec<(String, Condition)> = vec![
            (format!("SELECT l.id, r.id, l.s, r.s FROM l {join} r ON l.k = r.k"), &always),
            (format!("SELECT l.id, r.id FROM l {join} r ON l.k = r.k AND (l.id + r.id) % 3 <> 0"), &odd),
            // Two keys, packed into one integer.
            (format!("SELECT l.id, r.id, r.s FROM l {join} r ON r.k = l.k AND l.id % 2 = r.id % 2"), &same_parity),
            // Two keys, some of whose values (-5e9 and 3.6e9, not -7e8) do not fit in the 32 bits
            // packing gives each: those rows are compared in row format, the others packed.
            (
                format!(
                    "SELECT l.id, r.id FROM l {join} r ON l.k = r.k \
                     AND (l.id % 3) * 4294967296 - 5000000000 = (r.id % 3) * 4294967296 - 5000000000"
                ),
                &same_third,
            ),
            // Three keys (21 bits each), one negative.
            (
                format!(
                    "SELECT l.id, r.id FROM l {join} r ON l.k = r.k AND l.id % 2 = r.id % 2 \
                     AND -(l.id % 5) * 300000 = -(r.id % 5) * 300000"
                ),
                &same_tenth,
            ),
        ];
        for (sql, cond) in cases {
            let want = expected(&left, &right, keep_left, keep_right, cond);
            assert_eq!(pairs(&roomy, &sql), want, "unlimited: {sql}");
            assert_eq!(pairs(&tight, &sql), want, "spilled: {sql}");
        }
    }
    assert_eq!(roomy.spill().stats().files, 0, "nothing spills with room");
    let stats = tight.spill().stats();
    assert!(stats.files > 16 && stats.rows > 0, "the tight budget partitioned both sides: {stats:?}");
    assert_eq!(tight.spill().on_disk(), 0, "partitions removed once joined");
}

#[test]
fn unique_build_keys_spilled_join_matches_a_nested_loop() {
    // The build side's keys are unique and its rows wide (strings up to 6 KB), the probe side's
    // keys repeat: partitions of a spilled join are probed a few batches at a time on the worker
    // threads, and under the tight budget some waves make more output than the pool holds and
    // go again one batch at a time.
    let dir = tempfile::tempdir().unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let right: Rows = (0..6_000i64)
        .map(|i| {
            let len = rng.random_range(0..6_000);
            (Some(i), Some((0..len).map(|_| rng.random_range(b'a'..=b'z') as char).collect()), i)
        })
        .collect();
    let left: Rows = (0..50_000i64)
        .map(|i| {
            let k = if rng.random_bool(0.05) { None } else { Some(rng.random_range(0..8_000)) };
            (k, Some(format!("l{i}")), i)
        })
        .collect();
    write_key_rows(&dir.path().join("l.parquet"), &left, 5_000);
    write_key_rows(&dir.path().join("r.parquet"), &right, 1_000);
    let always = |_: i64, _: i64| true;
    let tight = engine(dir.path(), 5 << 20);
    for (join, keep_left, keep_right) in
        [("JOIN", false, false), ("LEFT JOIN", true, false), ("RIGHT JOIN", false, true), ("FULL JOIN", true, true)]
    {
        let sql = format!("SELECT l.id, r.id, r.s FROM l {join} r ON l.k = r.k");
        assert_eq!(pairs(&tight, &sql), expected(&left, &right, keep_left, keep_right, &always), "{sql}");
    }
    assert!(tight.spill().stats().files > 0, "the build side spilled");
}

#[test]
fn a_big_build_side_few_probe_keys_find_gives_every_pair() {
    // 100K distinct build keys (more than a core's cache holds, so the table filters probe keys
    // once most of a batch misses), probed by 300K rows of which about one in twenty has a
    // partner; then nearly every probe row has one (the filter is skipped).
    let dir = tempfile::tempdir().unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(21);
    let right: Rows = (0..100_000i64).map(|i| (Some(i * 20 - 1_000_000), None, i)).collect();
    write_key_rows(&dir.path().join("r.parquet"), &right, 8_192);
    let always = |_: i64, _: i64| true;
    for hits in [0.05, 0.97] {
        let left: Rows = (0..300_000i64)
            .map(|i| {
                let k = if rng.random_bool(0.02) {
                    None
                } else if rng.random_bool(hits) {
                    Some(rng.random_range(0..100_000) * 20 - 1_000_000)
                } else {
                    Some(rng.random_range(-5_000_000..5_000_000) | 1)
                };
                (k, None, i)
            })
            .collect();
        write_key_rows(&dir.path().join("l.parquet"), &left, 8_192);
        let e = engine(dir.path(), 1 << 30);
        for (join, keep_left, keep_right) in
            [("JOIN", false, false), ("LEFT JOIN", true, false), ("FULL JOIN", true, true)]
        {
            let sql = format!("SELECT l.id, r.id FROM l {join} r ON l.k = r.k");
            assert_eq!(pairs(&e, &sql), expected(&left, &right, keep_left, keep_right, &always), "{sql}, {hits}");
        }
    }
}

#[test]
fn a_join_above_an_outer_join_filters_its_probe_side_by_key_and_loses_nothing() {
    // The top join's build side (a few rows of r) filters the rows the outer join below probes
    // with (l's, by l.k) before that join: unmatched rows of either side of it, null-extended,
    // must come out exactly as without the filter.
    let dir = tempfile::tempdir().unwrap();
    let left = side(dir.path(), "l", 60_000, 5, 0.0, 200);
    let right = side(dir.path(), "r", 40_000, 6, 0.0, 200);
    let always = |_: i64, _: i64| true;
    let few: Vec<&KeyRow> = right.iter().filter(|r| r.2 < 60).collect();
    // r builds the outer join (the smaller side), l probes it; at 3 MiB r's rows spill.
    for budget in [1u64 << 30, 3 << 20] {
        let e = engine(dir.path(), budget);
        for (join, keep_left, keep_right) in
            [("LEFT JOIN", true, false), ("RIGHT JOIN", false, true), ("JOIN", false, false)]
        {
            let sql = format!(
                "SELECT a.lid, b.id, a.rs FROM (SELECT l.k AS k, l.id AS lid, r.s AS rs FROM l {join} r ON l.k = r.k) a \
                 JOIN (SELECT * FROM r WHERE id < 60) b ON a.k = b.k"
            );
            let mut want: Vec<(Option<i64>, Option<i64>)> = Vec::new();
            for (lid, _) in expected(&left, &right, keep_left, keep_right, &always) {
                let k = lid.and_then(|l| left[l as usize].0);
                for b in few.iter().filter(|b| k.is_some() && b.0 == k) {
                    want.push((lid, Some(b.2)));
                }
            }
            want.sort_unstable();
            assert_eq!(pairs(&e, &sql), want, "{sql}");
        }
        assert_eq!(e.spill().stats().files > 0, budget < 1 << 30, "the tight budget spills");
    }
}

#[test]
fn cross_comma_and_multi_table_joins() {
    let dir = tempfile::tempdir().unwrap();
    let left = side(dir.path(), "l", 3_000, 3, 0.0, 16);
    let right = side(dir.path(), "r", 2_000, 4, 0.0, 16);
    for budget in [1u64 << 30, 3 << 20] {
        let e = engine(dir.path(), budget);
        // CROSS JOIN, and a comma join whose WHERE equality becomes the key.
        let got = pairs(&e, "SELECT l.id, r.id FROM l CROSS JOIN r WHERE l.id < 40 AND r.id < 30");
        let want: Vec<_> = (0..40).flat_map(|l| (0..30).map(move |r| (Some(l), Some(r)))).collect();
        assert_eq!(got, want);
        let got = pairs(&e, "SELECT l.id, r.id FROM l, r WHERE l.k = r.k AND l.id > 100");
        let want = expected(&left, &right, false, false, &|l, _| l > 100);
        assert_eq!(got, want);
        // Three tables, written in the worst order (the first two share no condition).
        let got = pairs(
            &e,
            "SELECT a.id, c.id FROM l a, l c, r b WHERE a.k = b.k AND b.id = c.id AND a.id % 10 = 0 ORDER BY 1, 2",
        );
        let mut want = expected(&left, &right, false, false, &|l, _| l % 10 == 0);
        want.sort_unstable();
        assert_eq!(got, want, "c.id equals b.id");
        // USING: one shared column, from whichever side has it.
        let (_, rows) = flow_rows(&e, "SELECT * FROM l FULL JOIN r USING (id) WHERE id >= 2998 ORDER BY id");
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].len(), 5, "id once, then l's k and s, then r's k and s: {rows:?}");
        assert_eq!(rows[0][2], "2998");
        // Grouped, then ordered by a qualified name.
        let (_, rows) =
            flow_rows(&e, "SELECT l.k, count(*) AS n FROM l JOIN r ON l.k = r.k GROUP BY l.k ORDER BY l.k LIMIT 2");
        let mut counts: std::collections::BTreeMap<i64, usize> = Default::default();
        for (l, _) in expected(&left, &right, false, false, &|_, _| true) {
            *counts.entry(left[l.unwrap() as usize].0.unwrap()).or_default() += 1;
        }
        let want: Vec<Vec<String>> = counts.iter().take(2).map(|(k, n)| vec![k.to_string(), n.to_string()]).collect();
        assert_eq!(rows, want);
        // An empty side.
        let got = pairs(&e, "SELECT l.id, r.id FROM l LEFT JOIN (SELECT * FROM r WHERE id < 0) r ON l.k = r.k");
        assert_eq!(got, left.iter().map(|r| (Some(r.2), None)).collect::<Vec<_>>());
        let got = pairs(&e, "SELECT l.id, r.id FROM (SELECT * FROM l WHERE id < 0) l JOIN r ON l.k = r.k");
        assert!(got.is_empty());
    }
}

/// Every value of a query as text, with the column names.
fn flow_rows(e: &Engine, sql: &str) -> (Vec<String>, Vec<Vec<String>>) {
    use arrow::util::display::{ArrayFormatter, FormatOptions};
    let query = e.sql(sql).unwrap_or_else(|err| panic!("{sql}: {err}"));
    let names = query.schema().fields().iter().map(|f| f.name().clone()).collect();
    let opts = FormatOptions::default().with_null("NULL");
    let mut out = Vec::new();
    for b in query.collect().unwrap() {
        let fmts: Vec<ArrayFormatter> =
            b.columns().iter().map(|c| ArrayFormatter::try_new(c.as_ref(), &opts).unwrap()).collect();
        out.extend((0..b.num_rows()).map(|r| fmts.iter().map(|f| f.value(r).to_string()).collect()));
    }
    (names, out)
}

#[test]
fn join_errors_are_clear_at_plan_time() {
    let dir = tempfile::tempdir().unwrap();
    side(dir.path(), "l", 10, 5, 0.0, 16);
    side(dir.path(), "r", 10, 6, 0.0, 16);
    let e = engine(dir.path(), 1 << 30);
    let err = |sql: &str| e.sql(sql).err().unwrap_or_else(|| panic!("{sql} should fail")).to_string();
    assert!(err("SELECT k FROM l JOIN r ON l.k = r.k").contains("column reference 'k' is ambiguous"));
    assert!(err("SELECT l.id FROM l JOIN r ON l.k = r.s").contains("cannot compare BIGINT with VARCHAR"));
    assert!(err("SELECT l.id FROM l JOIN r ON l.k = r.kk").contains("unknown column 'r.kk'"));
    assert!(err("SELECT id FROM l JOIN r USING (nope)").contains("'nope' in USING is not a column of the left side"));
    assert!(err("SELECT l.id FROM l JOIN r ON l.id").contains("ON must be a boolean condition"));
    assert!(err("SELECT l.id FROM l NATURAL JOIN r").contains("NATURAL JOIN"));
    assert!(err("SELECT l.id, r.s, count(*) FROM l JOIN r ON l.k = r.k GROUP BY l.id")
        .contains("column 's' must appear in the GROUP BY clause"));
}

#[test]
fn operators_report_their_rows_memory_and_spilling() {
    let dir = tempfile::tempdir().unwrap();
    let left = side(dir.path(), "l", 60_000, 7, 0.0, 64);
    let right = side(dir.path(), "r", 40_000, 8, 0.0, 64);
    let sql = "SELECT l.k, count(*) AS n FROM l JOIN r ON l.k = r.k AND l.s <> r.s GROUP BY l.k ORDER BY n DESC";
    for (budget, spills) in [(1u64 << 30, false), (3 << 20, true)] {
        let e = engine(dir.path(), budget);
        let metrics = e.sql(sql).unwrap().for_each(|_| Ok(())).unwrap();
        let names: Vec<&str> = metrics.operators.iter().map(|o| o.name.as_str()).collect();
        assert_eq!(names, ["ExternalSort", "HashAggregate", "HashJoin", "Scan", "Scan"], "{metrics:?}");
        let join = &metrics.operators[2];
        assert_eq!(join.rows_in, (left.len() + right.len()) as u64, "both inputs: {join:?}");
        assert!(join.detail.contains("build side right"), "the smaller side builds: {join:?}");
        assert!(join.peak_reserved > 0);
        assert_eq!(join.spill_files > 0, spills, "{join:?}");
        assert_eq!(join.passes > 0, spills, "{join:?}");
        let aggregate = &metrics.operators[1];
        // It aggregates on the join's workers first: what reaches it are partial rows.
        assert!(aggregate.rows_in <= join.rows_out, "{metrics:?}");
        assert_eq!(metrics.operators[0].rows_in, aggregate.rows_out);
        assert_eq!(metrics.operators[0].rows_out, metrics.rows_out);
        // Each scan's output is what it read, also where its workers run the join's probe.
        let mut scans: Vec<u64> = metrics.operators[3..].iter().map(|o| o.rows_out).collect();
        scans.sort_unstable();
        assert_eq!(scans, [right.len() as u64, left.len() as u64], "{metrics:?}");
        // The join's output is what it made, not what the partial aggregation above it (on
        // the same workers) left of it.
        let differ = |l: i64, r: i64| match (&left[l as usize].1, &right[r as usize].1) {
            (Some(a), Some(b)) => a != b,
            _ => false,
        };
        let want = expected(&left, &right, false, false, &differ).len() as u64;
        assert_eq!(join.rows_out, want, "{metrics:?}");
    }
}

/// Only whether an uncorrelated `EXISTS` has a row matters: the join reads the subquery's first
/// row, not all of it. `NOT EXISTS (SELECT 1 FROM big)` once joined every outer row against all of
/// `big` (its rows of no columns spilled by the hundred thousand, and at its smallest budget the
/// join's table of them went over its limit and the run failed).
#[test]
fn an_uncorrelated_exists_reads_one_row_of_its_subquery() {
    let dir = tempfile::tempdir().unwrap();
    let left = side(dir.path(), "l", 20_000, 7, 0.0, 16);
    let right = side(dir.path(), "r", 50_000, 8, 0.0, 16);
    let count = |e: &Engine, sql: &str| flow_rows(e, sql).1[0][0].parse::<usize>().unwrap();
    for budget in [1u64 << 30, 2 << 20] {
        let e = engine(dir.path(), budget);
        for (sql, expected) in [
            ("SELECT count(*) FROM l WHERE NOT EXISTS (SELECT 1 FROM r)", 0),
            ("SELECT count(*) FROM l WHERE EXISTS (SELECT 1 FROM r WHERE r.k > 3)", left.len()),
            ("SELECT count(*) FROM l WHERE NOT EXISTS (SELECT r.s FROM r WHERE r.k < 0)", left.len()),
            (
                "SELECT count(*) FROM l WHERE EXISTS (SELECT 1 FROM r) = (l.k > 5)",
                left.iter().filter(|r| r.0 > Some(5)).count(),
            ),
        ] {
            assert_eq!(count(&e, sql), expected, "{sql} at {budget}");
            let metrics = e.sql(sql).unwrap().for_each(|_| Ok(())).unwrap();
            let join = metrics.operators.iter().find(|o| o.name == "HashJoin").unwrap();
            assert!(join.rows_in <= left.len() as u64 + 1, "{sql}: {metrics:?}");
            assert_eq!(join.spill_files, 0, "{sql}: {metrics:?}");
        }
    }
    assert!(right.len() > 1);
}

#[test]
fn explain_shows_the_join_order_keys_and_pushed_filters() {
    let dir = tempfile::tempdir().unwrap();
    side(dir.path(), "l", 3_000, 9, 0.0, 16);
    side(dir.path(), "r", 200, 10, 0.0, 16);
    let e = engine(dir.path(), 1 << 30);
    // Written with the two left tables first, though they share no condition.
    let plan =
        e.sql("SELECT a.id FROM l a, l c, r b WHERE a.k = b.k AND b.id = c.id AND b.s LIKE 'a%'").unwrap().explain();
    // Each join has a key (no cross product), and the filter on b sits right above its scan.
    assert!(plan.contains("Join: INNER on k = k") && plan.contains("Join: INNER on id = id"), "{plan}");
    assert!(!plan.contains("on true"), "{plan}");
    let lines: Vec<&str> = plan.lines().map(str::trim).collect();
    let filter = lines.iter().position(|l| *l == "Filter: (s LIKE 'a%')").expect("the filter on r");
    assert_eq!(lines[filter + 1], "Scan: r [k, s, id]", "{plan}");
    // The small input is joined first (the inner join, printed second), the other large one last.
    assert!(plan.find("on k = k").unwrap() < plan.find("on id = id").unwrap(), "{plan}");
}

#[test]
fn a_sort_above_a_spilling_join_gives_its_runs_back_when_the_join_needs_memory() {
    // The join's build side (long strings) is many times the budget, so it is joined a partition
    // at a time; the sort above keeps the sorted runs of the join's output in memory while it
    // can. A partition whose table does not fit what is free makes the pool ask the sort (then
    // the biggest holder) to write its runs to disk, instead of the join splitting again.
    let dir = tempfile::tempdir().unwrap();
    let left = side(dir.path(), "l", 150_000, 11, 0.0, 64);
    let right = side(dir.path(), "r", 100_000, 12, 0.0, 600);
    let sql = "SELECT l.id, r.id, length(r.s) FROM l JOIN r ON l.k = r.k ORDER BY l.s, l.id, r.id";
    let want = expected(&left, &right, false, false, &|_, _| true);
    // 4.5 MiB: 4 MiB until the scan counted the 1 MiB dictionaries of the string columns.
    for (budget, asked) in [((9u64 << 20) / 2, true), (1 << 30, false)] {
        let e = engine(dir.path(), budget);
        let mut out: Vec<(i64, i64)> = Vec::new();
        let metrics = e
            .sql(sql)
            .unwrap()
            .for_each(|b| {
                let l = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
                let r = b.column(1).as_any().downcast_ref::<Int64Array>().unwrap();
                out.extend((0..b.num_rows()).map(|i| (l.value(i), r.value(i))));
                Ok(())
            })
            .unwrap();
        // In order (by the left string, nulls last, then the ids), runs spilled or not.
        let mut sorted = out.clone();
        sorted.sort_by_key(|&(l, r)| (left[l as usize].1.is_none(), left[l as usize].1.clone(), l, r));
        assert!(out == sorted, "budget {budget}: not in ORDER BY order");
        let sort = &metrics.operators[0];
        assert_eq!(sort.name, "ExternalSort");
        assert_eq!(sort.spills_on_request > 0, asked, "{sort:?}");
        assert!(sort.spill_files >= sort.spills_on_request, "{sort:?}");
        assert_eq!(metrics.operators[1].spill_files > 0, asked, "{:?}", metrics.operators[1]);
        assert_eq!(pairs(&e, sql), want, "budget {budget}");
    }
}

#[test]
fn a_selective_join_tests_the_probe_keys_before_decoding_the_rest_and_loses_nothing() {
    // l's scan (150K rows in row groups of 5K, a tenth of its keys null) decodes l.k (and the
    // columns of its filter) first and l's other columns only for the rows that pass the filter
    // and whose key r's table has: with 40 keys in r nearly every row drops before the rest is
    // decoded; with 75K keys nearly all pass (then l is decoded whole). A filter alone works the
    // same way, also one on a string column tested on its dictionary. Answers, the rows read, the
    // scan's output and the join's input must be what they are without the test.
    let dir = tempfile::tempdir().unwrap();
    let left = side(dir.path(), "l", 150_000, 31, 0.0, 64);
    let always = |_: i64, _: i64| true;
    let third = |l: i64| !(7..=9).contains(&l);
    let thirds = left.iter().filter(|l| third(l.2)).count();
    for keys in [40i64, 75_000] {
        let right: Rows = (0..keys).map(|i| (Some(i * (75_000 / keys)), Some(format!("r{i}")), i)).collect();
        write_key_rows(&dir.path().join("r.parquet"), &right, 8_192);
        let differ = |l: i64, r: i64| match (&left[l as usize].1, &right[r as usize].1) {
            (Some(a), Some(b)) => a != b,
            _ => false,
        };
        let in_r: std::collections::HashSet<i64> = right.iter().filter_map(|r| r.0).collect();
        let mut semi: Vec<(Option<i64>, Option<i64>)> =
            left.iter().filter(|l| l.0.is_some_and(|k| in_r.contains(&k))).map(|l| (Some(l.2), Some(l.2))).collect();
        semi.sort_unstable();
        let filtered: Vec<_> =
            expected(&left, &right, false, false, &differ).into_iter().filter(|p| third(p.0.unwrap())).collect();
        let mut sparse: Vec<_> =
            left.iter().filter(|l| l.0.is_some_and(|k| k < 750)).map(|l| (Some(l.2), l.0)).collect();
        sparse.sort_unstable();
        // Conditions on a string column alone are tested on its dictionary's values.
        let starts_ab = |l: &KeyRow| l.1.as_deref().is_some_and(|s| s.starts_with("ab"));
        let mut ab: Vec<_> = left.iter().filter(|l| starts_ab(l)).map(|l| (Some(l.2), l.0)).collect();
        ab.sort_unstable();
        let late = |l: i64| left[l as usize].1.as_deref().is_some_and(|s| s >= "m");
        let late_keys: Vec<_> =
            expected(&left, &right, false, false, &always).into_iter().filter(|p| late(p.0.unwrap())).collect();
        let (abs, lates) = (left.iter().filter(|l| starts_ab(l)).count(), left.iter().filter(|l| late(l.2)).count());
        let e = engine(dir.path(), 1 << 30);
        let (all, below_750) = (left.len(), sparse.len());
        for (sql, want, scanned, joined) in [
            ("SELECT l.id, r.id FROM l JOIN r ON l.k = r.k", expected(&left, &right, false, false, &always), all, true),
            (
                "SELECT l.id, r.id FROM l JOIN r ON l.k = r.k AND l.s <> r.s",
                expected(&left, &right, false, false, &differ),
                all,
                true,
            ),
            ("SELECT l.id, l.id FROM l WHERE l.k IN (SELECT k FROM r)", semi, all, true),
            (
                "SELECT l.id, r.id FROM l JOIN r ON l.k = r.k AND l.s <> r.s WHERE l.id NOT IN (7, 8, 9)",
                filtered,
                thirds,
                true,
            ),
            ("SELECT l.id, l.k FROM l WHERE l.k < 750", sparse, below_750, false),
            ("SELECT l.id, l.k FROM l WHERE l.s LIKE 'ab%'", ab, abs, false),
            ("SELECT l.id, r.id FROM l JOIN r ON l.k = r.k WHERE l.s >= 'm'", late_keys, lates, true),
        ] {
            let dropped = || e.counters().early_dropped_rows.load(std::sync::atomic::Ordering::Relaxed);
            let before = dropped();
            assert_eq!(pairs(&e, sql), want, "{sql} with {keys} keys");
            let early = dropped() - before;
            if keys == 40 || !joined {
                assert!(early > left.len() as u64 / 2, "{sql}: {early} rows dropped before the rest was decoded");
            }
            let metrics = e.sql(sql).unwrap().for_each(|_| Ok(())).unwrap();
            let read = if joined { left.len() + right.len() } else { left.len() };
            assert_eq!(metrics.rows_read, read as u64, "{sql}: {metrics:?}");
            if joined {
                let join = metrics.operators.iter().find(|o| o.name == "HashJoin").unwrap();
                assert_eq!(join.rows_in, (scanned + right.len()) as u64, "{sql}: {metrics:?}");
                let mut scans: Vec<u64> =
                    metrics.operators.iter().filter(|o| o.name == "Scan").map(|o| o.rows_out).collect();
                scans.sort_unstable();
                assert_eq!(scans, [right.len() as u64, scanned as u64], "{sql}: {metrics:?}");
            }
        }
    }
}

#[test]
fn a_condition_that_can_fail_is_tested_only_on_the_rows_the_others_pass() {
    // `CAST(l.s AS BIGINT)` fails on l's strings (letters), but the filter tests it only on the
    // rows whose s is null (tested first, on the column's dictionary): an early test of every
    // row would fail the query.
    let dir = tempfile::tempdir().unwrap();
    let left = side(dir.path(), "l", 50_000, 41, 0.0, 16);
    side(dir.path(), "r", 100, 42, 0.0, 16);
    let e = engine(dir.path(), 1 << 30);
    let sql = "SELECT l.id, l.k FROM l WHERE l.s IS NULL AND CAST(l.s AS BIGINT) IS NULL";
    let mut want: Vec<_> = left.iter().filter(|l| l.1.is_none()).map(|l| (Some(l.2), l.0)).collect();
    want.sort_unstable();
    assert!(!want.is_empty());
    assert_eq!(pairs(&e, sql), want, "{sql}");
    assert!(e.sql("SELECT l.id, l.k FROM l WHERE CAST(l.s AS BIGINT) > 0").unwrap().for_each(|_| Ok(())).is_err());
}

#[test]
fn inputs_in_key_order_join_one_key_range_at_a_time_without_spilling_and_lose_nothing() {
    // Both sides are written in key order (as lineitem and orders are by order key), so their row
    // groups hold disjoint, increasing key ranges. r (the build side, ~8 MB with its strings) is
    // far over the 3 MiB budget: it is joined one key range at a time, with nothing written to
    // disk. Keys only l has, only r has, and below and above the other side's keys test that
    // every row lands in exactly one range; r's row groups straddle l's, so some are read for two
    // ranges. With a hot key (40K build rows of one key) its range does not fit after all and is
    // partitioned, then joined in chunks.
    let dir = tempfile::tempdir().unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(41);
    let mut left_keys: Vec<i64> = (0..300_000).map(|_| rng.random_range(-1_000..230_000)).collect();
    left_keys.sort_unstable();
    let left: Rows =
        left_keys.iter().enumerate().map(|(i, &k)| (Some(k), Some(format!("l{}", i % 97)), i as i64)).collect();
    write_key_rows(&dir.path().join("l.parquet"), &left, 10_000);
    let string = |rng: &mut rand::rngs::StdRng| -> String {
        (0..rng.random_range(20..80)).map(|_| rng.random_range(b'a'..=b'z') as char).collect()
    };
    let always = |_: i64, _: i64| true;
    let odd = |l: i64, r: i64| (l + r) % 3 != 0;
    for hot in [false, true] {
        // Even keys from 0 to 210K (some twice), or key 100K on 40K rows.
        let mut keys: Vec<i64> = (0..100_000).map(|i| i * 2 + (i % 7 == 0) as i64 * 2).collect();
        if hot {
            keys.extend(std::iter::repeat_n(100_000, 40_000));
        }
        keys.sort_unstable();
        let right: Rows = keys.iter().enumerate().map(|(i, &k)| (Some(k), Some(string(&mut rng)), i as i64)).collect();
        write_key_rows(&dir.path().join("r.parquet"), &right, 4_000);
        let tight = engine(dir.path(), 3 << 20);
        for (join, keep_left, keep_right) in
            [("JOIN", false, false), ("LEFT JOIN", true, false), ("RIGHT JOIN", false, true), ("FULL JOIN", true, true)]
        {
            let cases: Vec<(String, Condition)> = vec![
                (format!("SELECT l.id, r.id, r.s FROM l {join} r ON l.k = r.k"), &always),
                (format!("SELECT l.id, r.id, r.s FROM l {join} r ON l.k = r.k AND (l.id + r.id) % 3 <> 0"), &odd),
            ];
            for (sql, cond) in cases {
                let want = expected(&left, &right, keep_left, keep_right, cond);
                assert_eq!(pairs(&tight, &sql), want, "hot key {hot}: {sql}");
            }
        }
        let metrics =
            tight.sql("SELECT count(*) AS n FROM l JOIN r ON l.k = r.k").unwrap().for_each(|_| Ok(())).unwrap();
        let join = metrics.operators.iter().find(|o| o.name == "HashJoin").unwrap();
        assert_eq!(join.rows_out, expected(&left, &right, false, false, &always).len() as u64, "{metrics:?}");
        if !hot {
            // Each row of either side reaches the join once, whichever range reads it.
            assert_eq!(join.rows_in, (left.len() + right.len()) as u64, "{metrics:?}");
        }
        let spilled = tight.spill().stats().files;
        assert_eq!(spilled > 0, hot, "only the hot key's range spills: {spilled} files");
        assert_eq!(tight.spill().on_disk(), 0);
    }
}
