//! Property tests: for random data (nulls, duplicate keys, strings up to 8 KB), random batch sizes,
//! row-group sizes and budgets (some small enough to spill), joins, grouping, DISTINCT and ORDER BY
//! give the answers of plain Rust implementations, and the pool is back at zero after each query.

mod common;

use common::*;
use flow_engine::{Config, Engine};
use proptest::prelude::*;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// A row: key (few distinct values, nulls), a string (nulls, up to 8 KB), a unique id.
type Row = KeyRow;

fn rows(max: usize) -> impl Strategy<Value = Vec<Row>> {
    let key = prop_oneof![1 => Just(None), 8 => (0i64..40).prop_map(Some)];
    let text = prop_oneof![
        1 => Just(None),
        6 => "[a-c]{0,6}".prop_map(Some),
        2 => (0usize..8192, any::<u8>()).prop_map(|(n, c)| Some(((b'a' + c % 26) as char).to_string().repeat(n))),
    ];
    proptest::collection::vec((key, text), 0..max)
        .prop_map(|v| v.into_iter().enumerate().map(|(i, (k, s))| (k, s, i as i64)).collect())
}

fn write(dir: &Path, name: &str, rows: &[Row], row_group: usize) {
    write_key_rows(&dir.join(format!("{name}.parquet")), rows, row_group);
}

fn engine(dir: &Path, budget: u64, batch_size: usize) -> Engine {
    let config =
        Config::default().with_mem_budget(budget).with_threads(2).with_spill_dir(dir).with_batch_size(batch_size);
    let mut e = Engine::new(config).unwrap();
    for name in ["l", "r"] {
        e.register(name, dir.join(format!("{name}.parquet")).to_str().unwrap()).unwrap();
    }
    e
}

/// Every row of a query as text, in the order produced; `None` when the budget is refused before
/// running, as it is planned or as it starts (it must then name a larger one). Any other error
/// fails the test.
fn run(e: &Engine, sql: &str) -> Option<Vec<Vec<String>>> {
    use arrow::util::display::{ArrayFormatter, FormatOptions};
    let opts = FormatOptions::default().with_null("NULL");
    let mut out = Vec::new();
    let query = match e.sql(sql) {
        Ok(q) => q,
        Err(flow_engine::Error::BudgetTooSmall { needed, budget, .. }) => {
            assert!(needed > budget, "{sql}: refused, naming {needed} > {budget}");
            return None;
        }
        Err(err) => panic!("{sql}: {err}"),
    };
    let ran = query.for_each(|b| {
        let fmts: Vec<ArrayFormatter> =
            b.columns().iter().map(|c| ArrayFormatter::try_new(c.as_ref(), &opts).unwrap()).collect();
        out.extend((0..b.num_rows()).map(|r| fmts.iter().map(|f| f.value(r).to_string()).collect::<Vec<_>>()));
        Ok(())
    });
    match ran {
        Ok(_) => {}
        // A plan that does not fit is planned all the same (so that EXPLAIN shows it) and refused
        // as it starts, before any operator runs: the refusal names the whole query. An
        // operator failing for memory once running names itself, and fails the test.
        Err(flow_engine::Error::BudgetTooSmall { what, needed, budget }) if what == "this query" && out.is_empty() => {
            assert!(needed > budget, "{sql}: refused as it started, naming {needed} > {budget}");
            return None;
        }
        Err(err) => panic!("{sql}: {err}"),
    }
    assert_eq!(e.pool().reserved(), e.catalog_memory(), "pool back to zero after {sql}");
    Some(out)
}

/// The cases' seed: fixed, unless `PROPTEST_RNG_SEED` names another.
fn seed() -> proptest::test_runner::RngSeed {
    match std::env::var_os("PROPTEST_RNG_SEED") {
        Some(_) => ProptestConfig::default().rng_seed,
        None => proptest::test_runner::RngSeed::Fixed(20_261_208),
    }
}

fn text(v: Option<i64>) -> String {
    v.map_or("NULL".into(), |v| v.to_string())
}

proptest! {
    // Failing inputs are not saved to a file: with strings up to 8 KB a shrunk case runs to
    // megabytes. A failure prints its minimal input; add it here as a plain test.
    // The cases are the same on every run, so that CI never meets one nobody has seen (it did,
    // twice); `PROPTEST_RNG_SEED=<n>` draws others, to look for more.
    #![proptest_config(ProptestConfig {
        cases: 24,
        failure_persistence: None,
        rng_seed: seed(),
        ..ProptestConfig::default()
    })]

    #[test]
    fn operators_match_plain_rust(
        left in rows(3_000),
        right in rows(2_000),
        batch_size in prop_oneof![Just(1usize), Just(7), Just(100), Just(4096)],
        row_group in 1usize..2_000,
        budget in prop_oneof![Just(4u64 << 20), Just(6 << 20), Just(1 << 30)],
    ) {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "l", &left, row_group);
        write(dir.path(), "r", &right, row_group);
        let e = engine(dir.path(), budget, batch_size);

        // FULL JOIN on the key: pairs of ids, null-extended on either side.
        let mut by_key: HashMap<i64, Vec<i64>> = HashMap::new();
        for (k, _, id) in &right {
            if let Some(k) = k {
                by_key.entry(*k).or_default().push(*id);
            }
        }
        let mut matched = vec![false; right.len()];
        let mut want = Vec::new();
        for (k, _, lid) in &left {
            let partners = k.and_then(|k| by_key.get(&k)).cloned().unwrap_or_default();
            for &rid in &partners {
                want.push(vec![lid.to_string(), rid.to_string()]);
                matched[rid as usize] = true;
            }
            if partners.is_empty() {
                want.push(vec![lid.to_string(), "NULL".into()]);
            }
        }
        want.extend(right.iter().filter(|r| !matched[r.2 as usize]).map(|r| vec!["NULL".into(), r.2.to_string()]));
        want.sort();
        if let Some(mut got) = run(&e, "SELECT l.id, r.id, l.s, r.s FROM l FULL JOIN r ON l.k = r.k") {
            got.iter_mut().for_each(|r| r.truncate(2));
            got.sort();
            prop_assert_eq!(got, want);
        }

        // GROUP BY with count, count(DISTINCT), sum and max of strings.
        type Group = (i64, std::collections::BTreeSet<String>, i64, Option<String>);
        let mut groups: BTreeMap<Option<i64>, Group> = BTreeMap::new();
        for (k, s, id) in &left {
            let g = groups.entry(*k).or_default();
            g.0 += 1;
            g.2 += id;
            if let Some(s) = s {
                g.1.insert(s.clone());
                if g.3.as_ref().is_none_or(|m| s > m) {
                    g.3 = Some(s.clone());
                }
            }
        }
        let want: Vec<Vec<String>> = groups
            .iter()
            .map(|(k, (n, set, sum, max))| {
                vec![text(*k), n.to_string(), set.len().to_string(), sum.to_string(), max.clone().unwrap_or("NULL".into())]
            })
            .collect();
        if let Some(got) = run(&e, "SELECT k, count(*), count(DISTINCT s), sum(id), max(s) FROM l GROUP BY k ORDER BY k NULLS FIRST") {
            prop_assert_eq!(got, want);
        }

        // GROUP BY a small integer and a string: keys packed into one integer where the string
        // is short (up to 3 bytes here), in row format where it is not, in one table.
        let mut pairs: BTreeMap<(Option<i64>, Option<String>), (i64, i64)> = BTreeMap::new();
        for (k, s, id) in &left {
            let g = pairs.entry((*k, s.clone())).or_default();
            g.0 += 1;
            g.1 += id;
        }
        let want: Vec<Vec<String>> = pairs
            .iter()
            .map(|((k, s), (n, sum))| vec![text(*k), s.clone().unwrap_or("NULL".into()), n.to_string(), sum.to_string()])
            .collect();
        let sql = "SELECT CAST(k AS INTEGER) AS k, s, count(*), sum(id) FROM l GROUP BY 1, 2 ORDER BY 1 NULLS FIRST, 2 NULLS FIRST";
        if let Some(got) = run(&e, sql) {
            prop_assert_eq!(got, want);
        }

        // ORDER BY a string DESC, then id: a stable, total order.
        let mut sorted = left.clone();
        sorted.sort_by(|a, b| match (&a.1, &b.1) {
            (None, None) => a.2.cmp(&b.2),
            (None, _) => std::cmp::Ordering::Greater,
            (_, None) => std::cmp::Ordering::Less,
            (Some(x), Some(y)) => y.cmp(x).then(a.2.cmp(&b.2)),
        });
        let want: Vec<Vec<String>> = sorted.iter().map(|r| vec![r.2.to_string()]).collect();
        if let Some(got) = run(&e, "SELECT id FROM l ORDER BY s DESC, id") {
            prop_assert_eq!(got, want);
        }

        // UNION of keys from both sides.
        let keys: std::collections::BTreeSet<Option<i64>> = left.iter().chain(&right).map(|r| r.0).collect();
        let want: Vec<Vec<String>> = keys.iter().map(|k| vec![text(*k)]).collect();
        if let Some(got) = run(&e, "SELECT k FROM l UNION SELECT k FROM r ORDER BY k NULLS FIRST") {
            prop_assert_eq!(got, want);
        }
        prop_assert_eq!(e.spill().on_disk(), 0);
    }
}

/// Found by the property test: a sort of strings up to 8 KB, read from row groups of one row in
/// batches of 100 rows at 4 MiB, was accepted and then failed merging its runs ("needs at least
/// 5.9 MiB"). Its shape, made deterministically.
#[test]
fn sort_of_long_strings_from_one_row_row_groups_runs_at_4_mib() {
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let mut rows = |n: i64| -> Vec<Row> {
        (0..n)
            .map(|i| {
                let k = (next(9) != 0).then(|| next(40) as i64);
                let s = match next(9) {
                    0 => None,
                    1 | 2 => Some(((b'a' + next(26) as u8) as char).to_string().repeat(next(8192) as usize)),
                    _ => Some((0..next(7)).map(|_| (b'a' + next(3) as u8) as char).collect()),
                };
                (k, s, i)
            })
            .collect()
    };
    let left = rows(618);
    let right = rows(780);
    let dir = tempfile::tempdir().unwrap();
    // Row groups of one row: the footers (held while the engine lives) take much of the budget.
    write(dir.path(), "l", &left, 1);
    write(dir.path(), "r", &right, 1);
    let e = engine(dir.path(), 4 << 20, 100);
    let mut sorted = left.clone();
    sorted.sort_by(|a, b| match (&a.1, &b.1) {
        (None, None) => a.2.cmp(&b.2),
        (None, _) => std::cmp::Ordering::Greater,
        (_, None) => std::cmp::Ordering::Less,
        (Some(x), Some(y)) => y.cmp(x).then(a.2.cmp(&b.2)),
    });
    let want: Vec<Vec<String>> = sorted.iter().map(|r| vec![r.2.to_string()]).collect();
    let got = run(&e, "SELECT id FROM l ORDER BY s DESC, id").expect("runs at 4 MiB");
    assert_eq!(got, want);
}
