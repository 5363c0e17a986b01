//! `flow bench`: the macro benchmark suite. It makes its data when missing (TPC-H through
//! `tpchgen`, and a synthetic table with skewed keys and long strings), runs each query as a fresh
//! `flow sql -o` process under the budget, and, when their Python packages are there, the same
//! query on DuckDB and Polars, alternating. Wall time and peak RSS are measured from outside
//! (`wait4`); spilled bytes come from flow's report. Results go to Parquet for every engine.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use flow_engine::generate::TableSpec;
use flow_engine::{human, Error};

use crate::args::BenchArgs;

const PEERS_SCRIPT: &str = include_str!("../../benches/peers.py");

/// The TPC-H queries as published (standard substitution parameters).
const TPCH: [&str; 22] = [
    include_str!("../../tests/tpch/queries/q01.sql"),
    include_str!("../../tests/tpch/queries/q02.sql"),
    include_str!("../../tests/tpch/queries/q03.sql"),
    include_str!("../../tests/tpch/queries/q04.sql"),
    include_str!("../../tests/tpch/queries/q05.sql"),
    include_str!("../../tests/tpch/queries/q06.sql"),
    include_str!("../../tests/tpch/queries/q07.sql"),
    include_str!("../../tests/tpch/queries/q08.sql"),
    include_str!("../../tests/tpch/queries/q09.sql"),
    include_str!("../../tests/tpch/queries/q10.sql"),
    include_str!("../../tests/tpch/queries/q11.sql"),
    include_str!("../../tests/tpch/queries/q12.sql"),
    include_str!("../../tests/tpch/queries/q13.sql"),
    include_str!("../../tests/tpch/queries/q14.sql"),
    include_str!("../../tests/tpch/queries/q15.sql"),
    include_str!("../../tests/tpch/queries/q16.sql"),
    include_str!("../../tests/tpch/queries/q17.sql"),
    include_str!("../../tests/tpch/queries/q18.sql"),
    include_str!("../../tests/tpch/queries/q19.sql"),
    include_str!("../../tests/tpch/queries/q20.sql"),
    include_str!("../../tests/tpch/queries/q21.sql"),
    include_str!("../../tests/tpch/queries/q22.sql"),
];

/// Out-of-core shapes: state many times a small budget.
const OUT_OF_CORE: [(&str, &str); 6] = [
    (
        "group_orderkey",
        "SELECT l_orderkey, count(*) AS n, sum(l_quantity) AS q, max(l_shipdate) AS last FROM lineitem GROUP BY l_orderkey",
    ),
    (
        "sort_comment",
        "SELECT l_orderkey, l_partkey, l_suppkey, l_quantity, l_shipdate, l_comment FROM lineitem \
         ORDER BY l_comment, l_orderkey",
    ),
    (
        "join_orders",
        "SELECT o_orderpriority, count(*) AS n FROM lineitem JOIN orders ON l_orderkey = o_orderkey \
         GROUP BY o_orderpriority",
    ),
    (
        "skewed_group",
        "SELECT key_str, count(*) AS n, sum(amount) AS total, max(payload) AS longest FROM synth GROUP BY key_str",
    ),
    (
        "count_distinct",
        "SELECT category, count(DISTINCT key) AS keys, count(DISTINCT payload) AS payloads FROM synth GROUP BY category",
    ),
    (
        "window_running",
        "SELECT id, key, sum(value) OVER (PARTITION BY key ORDER BY id ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) \
         AS running, row_number() OVER (PARTITION BY key ORDER BY id) AS rn FROM synth",
    ),
];

/// The synthetic table at a scale: as many rows as lineitem, an eighth as many keys, Zipf 1.1
/// (the biggest key holds about a tenth of the rows), 2% nulls, strings of 16 to 96 bytes.
fn synth_spec(scale: f64) -> TableSpec {
    let rows = (6_000_000.0 * scale).round().max(1.0) as u64;
    TableSpec { rows, keys: (rows / 8).max(1), skew: 1.1, categories: 16, nulls: 0.02, string_len: (16, 96), seed: 42 }
}

/// One query of the suite.
struct Query {
    name: String,
    sql: String,
}

fn queries(selection: &[String]) -> Result<Vec<Query>, Error> {
    let mut all = Vec::new();
    for (i, sql) in TPCH.iter().enumerate() {
        all.push(Query { name: format!("q{:02}", i + 1), sql: sql.trim().trim_end_matches(';').to_string() });
    }
    for (name, sql) in OUT_OF_CORE {
        all.push(Query { name: name.to_string(), sql: sql.to_string() });
    }
    let mut chosen: Vec<Query> = Vec::new();
    for s in selection {
        let s = s.trim().to_ascii_lowercase();
        let matches: Vec<&Query> = match s.as_str() {
            "all" => all.iter().collect(),
            "tpch" => all.iter().filter(|q| q.name.starts_with('q')).collect(),
            "ooc" => all.iter().filter(|q| !q.name.starts_with('q')).collect(),
            name => {
                // `q1` and `q01` both name TPC-H query 1.
                let name = match name.strip_prefix('q').and_then(|n| n.parse::<usize>().ok()) {
                    Some(n) => format!("q{n:02}"),
                    None => name.to_string(),
                };
                all.iter().filter(|q| q.name == name).collect()
            }
        };
        if matches.is_empty() {
            let names: Vec<&str> = all.iter().map(|q| q.name.as_str()).collect();
            return Err(Error::Config(format!(
                "unknown query '{s}' (hint: tpch, ooc, all, or one of {})",
                names.join(", ")
            )));
        }
        for q in matches {
            if !chosen.iter().any(|c| c.name == q.name) {
                chosen.push(Query { name: q.name.clone(), sql: q.sql.clone() });
            }
        }
    }
    Ok(chosen)
}

/// What one process did.
#[derive(Debug, Clone, Default)]
struct Measure {
    seconds: f64,
    rss: u64,
    spilled: u64,
    rows: Option<u64>,
    /// Why there is no time: "unsupported", "failed: ...", "timeout".
    problem: Option<String>,
}

/// Runs a command with a timeout; returns (exit code, wall seconds, peak RSS bytes, stderr).
fn timed(mut cmd: Command, timeout: Duration, err_path: &Path) -> Result<(i32, f64, u64, String), Error> {
    let started = Instant::now();
    let err = std::fs::File::create(err_path).map_err(|e| Error::Io { path: err_path.into(), source: e })?;
    let child = cmd
        .stdin(Stdio::null())
        .stderr(err)
        .spawn()
        .map_err(|e| Error::Execution(format!("starting {:?}: {e}", cmd.get_program())))?;
    let pid = child.id() as libc::pid_t;
    // Reaped below by wait4, which reports the child's own peak RSS.
    std::mem::forget(child);
    let (status, rss) = loop {
        let mut status = 0;
        // SAFETY: wait4 on our own child with valid out-pointers.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
        if r == pid {
            break (status, usage.ru_maxrss as u64 * 1024);
        }
        if r < 0 {
            return Err(Error::Execution(format!(
                "waiting for {:?}: {}",
                cmd.get_program(),
                std::io::Error::last_os_error()
            )));
        }
        if started.elapsed() > timeout {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let seconds = started.elapsed().as_secs_f64();
    let code = if libc::WIFEXITED(status) { libc::WEXITSTATUS(status) } else { 128 + libc::WTERMSIG(status) };
    let stderr = std::fs::read_to_string(err_path).unwrap_or_default();
    Ok((code, seconds, rss, stderr))
}

struct Suite {
    data: PathBuf,
    work: tempfile::TempDir,
    budget: u64,
    threads: usize,
    python: PathBuf,
    timeout: Duration,
}

impl Suite {
    fn flow(&self, q: &Query) -> Result<Measure, Error> {
        let out = self.work.path().join(format!("flow-{}.parquet", q.name));
        let report = self.work.path().join("report.json");
        let mut cmd = Command::new(std::env::current_exe().map_err(|e| Error::Execution(e.to_string()))?);
        cmd.args(["sql", "--mem-budget", &self.budget.to_string(), "--threads", &self.threads.to_string()])
            .arg("--sources")
            .arg(&self.data)
            .arg("--report")
            .arg(&report)
            .arg("-o")
            .arg(&out)
            .arg(&q.sql)
            .stdout(Stdio::null())
            .env_remove("FLOW_MEM_BUDGET")
            .env_remove("FLOW_THREADS");
        let (code, seconds, rss, stderr) = timed(cmd, self.timeout, &self.work.path().join("stderr"))?;
        let mut m = Measure { seconds, rss, ..Default::default() };
        if code != 0 {
            m.problem = Some(problem(code, &stderr));
            return Ok(m);
        }
        if let Ok(text) = std::fs::read_to_string(&report) {
            if let Ok(json) = serde_json::from_str::<serde_json::Value>(&text) {
                m.spilled = json["spill"]["bytes"].as_u64().unwrap_or(0);
            }
        }
        m.rows = flow_engine::inspect::row_count(&out).ok();
        Ok(m)
    }

    fn peer(&self, engine: &str, q: &Query) -> Result<Measure, Error> {
        let out = self.work.path().join(format!("{engine}-{}.parquet", q.name));
        let query_file = self.work.path().join("query.sql");
        let script = self.work.path().join("peers.py");
        std::fs::write(&query_file, &q.sql).map_err(|e| Error::Io { path: query_file.clone(), source: e })?;
        let mut cmd = Command::new(&self.python);
        cmd.arg(&script)
            .arg(engine)
            .arg(&self.data)
            .arg(&query_file)
            .arg(&out)
            .arg(self.threads.to_string())
            .arg(self.budget.to_string())
            .env("POLARS_MAX_THREADS", self.threads.to_string())
            .stdout(Stdio::null());
        let (code, seconds, rss, stderr) = timed(cmd, self.timeout, &self.work.path().join("stderr"))?;
        let mut m = Measure { seconds, rss, ..Default::default() };
        if code != 0 {
            m.problem = Some(problem(code, &stderr));
            return Ok(m);
        }
        m.rows = flow_engine::inspect::row_count(&out).ok();
        Ok(m)
    }
}

fn problem(code: i32, stderr: &str) -> String {
    if code == 128 + libc::SIGKILL {
        return "timeout".into();
    }
    // The error's own line: flow's `error: ...`, or the last line naming an error of a Python
    // traceback (DuckDB adds hints after it).
    let lines: Vec<&str> = stderr.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    let last = lines
        .iter()
        .rev()
        .find(|l| l.starts_with("error:") || l.contains("Error") || l.contains("Exception"))
        .or(lines.last())
        .copied()
        .unwrap_or("");
    if code == 3 && last.starts_with("unsupported") {
        return "unsupported".into();
    }
    let short: String = last.chars().take(120).collect();
    format!("failed ({code}): {short}")
}

/// Which peers can run: those whose package imports in `python`.
fn available_peers(python: &Path, wanted: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for p in wanted {
        let module = match p.as_str() {
            "duckdb" | "polars" => p.as_str(),
            "none" | "" => continue,
            other => {
                eprintln!("flow bench: unknown peer '{other}' (hint: duckdb, polars or none)");
                continue;
            }
        };
        let ok = Command::new(python)
            .args(["-c", &format!("import {module}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            out.push(p.clone());
        } else {
            eprintln!("flow bench: {p} is not installed for {} (hint: pip install {p}); skipping it", python.display());
        }
    }
    out
}

/// Makes the data the selected queries need, where missing. `flow gen` runs as a child process:
/// the kernel counts the RSS high-water mark of the process a child is spawned from into the
/// child's own peak (Linux records the old memory map's peak at `exec`), so this process must stay
/// small for the measurements of the queries to be the queries' own.
fn ensure_data(args: &BenchArgs, data: &Path, budget: u64, threads: usize, queries: &[Query]) -> Result<(), Error> {
    let needs = |table: &str| queries.iter().any(|q| mentions(&q.sql, table));
    let missing: Vec<String> = crate::generate::TPCH_TABLES
        .iter()
        .filter(|t| needs(t) && !data.join(format!("{t}.parquet")).exists())
        .map(|t| t.to_string())
        .collect();
    let gen = |what: &[String]| -> Result<(), Error> {
        let exe = std::env::current_exe().map_err(|e| Error::Execution(e.to_string()))?;
        let status = Command::new(exe)
            .arg("gen")
            .args(what)
            .args(["--mem-budget", &budget.to_string(), "--threads", &threads.to_string()])
            .env_remove("FLOW_MEM_BUDGET")
            .env_remove("FLOW_THREADS")
            .status()
            .map_err(|e| Error::Execution(format!("starting flow gen: {e}")))?;
        if !status.success() {
            return Err(Error::Execution(format!("flow gen {} failed", what.join(" "))));
        }
        Ok(())
    };
    if !missing.is_empty() {
        eprintln!(
            "flow bench: making TPC-H scale factor {} in {} ({})",
            args.scale,
            data.display(),
            missing.join(", ")
        );
        gen(&[
            "tpch".into(),
            "--scale".into(),
            args.scale.to_string(),
            "--tables".into(),
            missing.join(","),
            "-o".into(),
            data.display().to_string(),
        ])?;
    }
    let synth = data.join("synth.parquet");
    if needs("synth") && !synth.exists() {
        let spec = synth_spec(args.scale);
        eprintln!("flow bench: making {} ({} rows)", synth.display(), spec.rows);
        let (short, long) = spec.string_len;
        gen(&[
            "table".into(),
            "--rows".into(),
            spec.rows.to_string(),
            "--keys".into(),
            spec.keys.to_string(),
            "--skew".into(),
            spec.skew.to_string(),
            "--categories".into(),
            spec.categories.to_string(),
            "--nulls".into(),
            spec.nulls.to_string(),
            "--string-len".into(),
            format!("{short}..{long}"),
            "--seed".into(),
            spec.seed.to_string(),
            "-o".into(),
            synth.display().to_string(),
        ])?;
    }
    Ok(())
}

/// Reads every Parquet file of the data once, so that the first engine to run a query does not
/// pay for a cold page cache that the next one finds warm.
fn warm_up(data: &Path) {
    use std::io::Read;
    let Ok(entries) = std::fs::read_dir(data) else { return };
    let mut buffer = vec![0u8; 1 << 20];
    for entry in entries.flatten() {
        if entry.path().extension().is_some_and(|e| e == "parquet") {
            if let Ok(mut f) = std::fs::File::open(entry.path()) {
                while matches!(f.read(&mut buffer), Ok(n) if n > 0) {}
            }
        }
    }
}

/// Whether `sql` names `table` as a word.
fn mentions(sql: &str, table: &str) -> bool {
    sql.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).any(|w| w.eq_ignore_ascii_case(table))
}

/// Runs the suite and prints its table.
pub fn run(args: &BenchArgs) -> Result<(), Error> {
    let budget = flow_engine::parse_size(&args.mem_budget)?;
    let threads = match args.threads {
        Some(0) => return Err(Error::Config("--threads must be at least 1".into())),
        Some(t) => t,
        None => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
    };
    if !(args.scale > 0.0 && args.scale.is_finite()) {
        return Err(Error::Config(format!("--scale {}: must be above 0", args.scale)));
    }
    if args.runs == 0 {
        return Err(Error::Config("--runs must be at least 1".into()));
    }
    let queries = queries(&args.queries)?;
    let data = args.data.clone().unwrap_or_else(|| PathBuf::from(format!("bench-data/sf{}", args.scale)));
    ensure_data(args, &data, budget, threads, &queries)?;
    let python = args.python.clone().unwrap_or_else(|| {
        let venv = PathBuf::from(".venv/bin/python");
        if venv.exists() {
            venv
        } else {
            PathBuf::from("python3")
        }
    });
    let peers = available_peers(&python, &args.peers);
    warm_up(&data);
    let work = tempfile::Builder::new()
        .prefix("flow-bench-")
        .tempdir()
        .map_err(|e| Error::Io { path: std::env::temp_dir(), source: e })?;
    std::fs::write(work.path().join("peers.py"), PEERS_SCRIPT)
        .map_err(|e| Error::Io { path: work.path().join("peers.py"), source: e })?;
    let suite = Suite { data: data.clone(), work, budget, threads, python, timeout: Duration::from_secs(args.timeout) };

    let mut rows: Vec<(String, Measure, Vec<Measure>)> = Vec::new();
    for q in &queries {
        let mut best_flow: Option<Measure> = None;
        let mut best_peers: Vec<Option<Measure>> = vec![None; peers.len()];
        // Engines alternate within each run, so drift on a shared machine hits all of them.
        for _ in 0..args.runs {
            let m = suite.flow(q)?;
            best_flow = Some(better(best_flow, m));
            for (i, p) in peers.iter().enumerate() {
                let m = suite.peer(p, q)?;
                best_peers[i] = Some(better(best_peers[i].take(), m));
            }
        }
        let flow = best_flow.expect("at least one run");
        let peer_measures: Vec<Measure> = best_peers.into_iter().map(|m| m.expect("at least one run")).collect();
        eprintln!("{}", line(&q.name, &flow, &peer_measures, &peers));
        rows.push((q.name.clone(), flow, peer_measures));
    }
    let table = markdown(&rows, &peers, budget, threads, args.scale);
    println!("{table}");
    if let Some(path) = &args.markdown {
        std::fs::write(path, &table).map_err(|e| Error::Io { path: path.clone(), source: e })?;
    }
    if let Some(path) = &args.json {
        let json = serde_json::json!({
            "scale": args.scale,
            "mem_budget": budget,
            "threads": threads,
            "queries": rows.iter().map(|(name, flow, measures)| {
                let mut engines = serde_json::Map::new();
                engines.insert("flow".into(), measure_json(flow));
                for (p, m) in peers.iter().zip(measures) {
                    engines.insert(p.clone(), measure_json(m));
                }
                serde_json::json!({ "name": name, "engines": engines })
            }).collect::<Vec<_>>(),
        });
        let text = serde_json::to_string_pretty(&json).map_err(|e| Error::Execution(e.to_string()))?;
        std::fs::write(path, text).map_err(|e| Error::Io { path: path.clone(), source: e })?;
    }
    let failed: Vec<&str> = rows.iter().filter(|(_, f, _)| f.problem.is_some()).map(|(n, _, _)| n.as_str()).collect();
    if !failed.is_empty() {
        return Err(Error::Execution(format!("flow failed on {}", failed.join(", "))));
    }
    Ok(())
}

fn measure_json(m: &Measure) -> serde_json::Value {
    serde_json::json!({
        "seconds": m.problem.is_none().then_some(m.seconds),
        "peak_rss": m.rss,
        "spilled_bytes": m.spilled,
        "rows": m.rows,
        "problem": m.problem,
    })
}

/// The faster of two measurements (one that ran beats one that did not).
fn better(best: Option<Measure>, m: Measure) -> Measure {
    match best {
        None => m,
        Some(b) if b.problem.is_some() => m,
        Some(b) if m.problem.is_none() && m.seconds < b.seconds => Measure { rss: m.rss.max(b.rss), ..m },
        Some(b) => Measure { rss: b.rss.max(m.rss), ..b },
    }
}

fn cell(m: &Measure) -> String {
    match &m.problem {
        Some(p) => p.clone(),
        None => format!("{:.2}", m.seconds),
    }
}

fn line(name: &str, flow: &Measure, peers: &[Measure], names: &[String]) -> String {
    let mut s = format!("{name}: flow {} s, {} RSS, spilled {}", cell(flow), human(flow.rss), human(flow.spilled));
    for (p, m) in names.iter().zip(peers) {
        let _ = write!(s, "; {p} {} s, {} RSS", cell(m), human(m.rss));
    }
    s
}

fn markdown(
    rows: &[(String, Measure, Vec<Measure>)],
    peers: &[String],
    budget: u64,
    threads: usize,
    scale: f64,
) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "TPC-H scale factor {scale}, flow --mem-budget {}, {threads} threads{}. Seconds are wall time of the whole process \
         (the best of the runs), RSS its peak as the kernel reports it.\n",
        human(budget),
        if peers.is_empty() {
            String::new()
        } else {
            format!("; peers: {} (DuckDB's memory_limit {}; Polars has none)", peers.join(", "), human(budget))
        }
    );
    let mut header = "| query | flow s | flow peak RSS | flow spilled |".to_string();
    let mut rule = "| --- | --- | --- | --- |".to_string();
    for p in peers {
        let _ = write!(header, " {p} s | {p} peak RSS | flow / {p} |");
        rule.push_str(" --- | --- | --- |");
    }
    let _ = writeln!(out, "{header}\n{rule}");
    let mut totals = vec![(0.0, 0.0); peers.len()];
    let mut flow_total = 0.0;
    for (name, flow, measures) in rows {
        let mut row = format!("| {name} | {} | {} | {} |", cell(flow), human(flow.rss), human(flow.spilled));
        for (i, m) in measures.iter().enumerate() {
            let ratio = match (&flow.problem, &m.problem) {
                (None, None) => {
                    if name.starts_with('q') {
                        totals[i].0 += flow.seconds;
                        totals[i].1 += m.seconds;
                    }
                    let r = flow.seconds / m.seconds.max(1e-6);
                    let mismatch = match (flow.rows, m.rows) {
                        (Some(a), Some(b)) if a != b => format!(" (rows differ: {a} vs {b})"),
                        _ => String::new(),
                    };
                    format!("{r:.2}{}{mismatch}", if r > 1.0 { " slower" } else { "" })
                }
                _ => "-".into(),
            };
            let _ = write!(row, " {} | {} | {ratio} |", cell(m), human(m.rss));
        }
        if name.starts_with('q') && flow.problem.is_none() {
            flow_total += flow.seconds;
        }
        let _ = writeln!(out, "{row}");
    }
    if rows.iter().any(|(n, _, _)| n.starts_with('q')) {
        let mut row = format!("| TPC-H total | {flow_total:.2} | | |");
        for (flow, peer) in &totals {
            let _ = write!(row, " {peer:.2} | | {:.2} (queries both ran) |", flow / peer.max(1e-6));
        }
        let _ = writeln!(out, "{row}");
    }
    out
}
