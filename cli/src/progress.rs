//! Progress on stderr, only when it is a terminal: for a step with units, a bar over its units
//! (with ETA); for the query running now, rows and bytes read, memory in use, spilled bytes.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flow_engine::{human, Engine};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

pub struct Progress {
    bars: Option<MultiProgress>,
    query: Option<ProgressBar>,
    units: Mutex<Option<ProgressBar>>,
    step: Arc<Mutex<String>>,
    done: Arc<AtomicBool>,
    /// For a query whose input size is known: rows read when it started, and rows it will read.
    rows_base: Arc<AtomicU64>,
    rows_total: Arc<AtomicU64>,
    counters: Option<Arc<flow_engine::source::ScanCounters>>,
}

impl Progress {
    pub fn start(engine: &Engine) -> Progress {
        let step = Arc::new(Mutex::new(String::new()));
        let done = Arc::new(AtomicBool::new(false));
        let (rows_base, rows_total) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        if !std::io::stderr().is_terminal() {
            return Progress {
                bars: None,
                query: None,
                units: Mutex::new(None),
                step,
                done,
                rows_base,
                rows_total,
                counters: None,
            };
        }
        let bars = MultiProgress::new();
        let bar = bars.add(ProgressBar::new_spinner());
        bar.set_style(ProgressStyle::with_template("{spinner} [{elapsed_precise}] {msg}").expect("valid template"));
        bar.enable_steady_tick(Duration::from_millis(120));
        let (b, s, d) = (bar.clone(), step.clone(), done.clone());
        let (base, total) = (rows_base.clone(), rows_total.clone());
        let counters = engine.counters().clone();
        let shared_counters = counters.clone();
        let pool = engine.pool().clone();
        let spill = engine.spill().clone();
        std::thread::spawn(move || {
            while !d.load(Ordering::Relaxed) {
                let step = s.lock().map(|s| s.clone()).unwrap_or_default();
                let total = total.load(Ordering::Relaxed);
                if total > 0 {
                    let read = counters.rows.load(Ordering::Relaxed).saturating_sub(base.load(Ordering::Relaxed));
                    b.set_length(total);
                    b.set_position(read.min(total));
                }
                b.set_message(format!(
                    "{step}{}rows read {}, {} read, memory {} of {}, spilled {}",
                    if step.is_empty() { "" } else { ": " },
                    counters.rows.load(Ordering::Relaxed),
                    human(counters.bytes.load(Ordering::Relaxed)),
                    human(pool.reserved()),
                    human(pool.budget()),
                    human(spill.stats().bytes),
                ));
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        Progress {
            bars: Some(bars),
            query: Some(bar),
            units: Mutex::new(None),
            step,
            done,
            rows_base,
            rows_total,
            counters: Some(shared_counters),
        }
    }

    /// A query starts: with its input size known, the line becomes a bar over the rows it reads,
    /// with an ETA; otherwise a spinner.
    pub fn start_query(&self, name: &str, input_rows: Option<u64>) {
        self.set_step(name);
        let (Some(bar), Some(counters)) = (&self.query, &self.counters) else { return };
        self.rows_base.store(counters.rows.load(Ordering::Relaxed), Ordering::Relaxed);
        self.rows_total.store(input_rows.unwrap_or(0), Ordering::Relaxed);
        let template = match input_rows {
            Some(_) => "{spinner} [{bar:30}] {percent}% of the input, ETA {eta}: {msg}",
            None => "{spinner} [{elapsed_precise}] {msg}",
        };
        bar.set_style(ProgressStyle::with_template(template).expect("valid template").progress_chars("=> "));
        bar.set_position(0);
    }

    pub fn set_step(&self, name: &str) {
        if let Ok(mut s) = self.step.lock() {
            *s = name.to_string();
        }
    }

    /// Starts the bar over a step's units.
    pub fn start_units(&self, step: &str, total: usize) {
        let Some(bars) = &self.bars else { return };
        let bar = bars.insert(0, ProgressBar::new(total as u64));
        bar.set_style(
            ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} units, {elapsed_precise} elapsed, ETA {eta}")
                .expect("valid template")
                .progress_chars("=> "),
        );
        bar.set_prefix(step.to_string());
        if let Ok(mut units) = self.units.lock() {
            if let Some(old) = units.replace(bar) {
                old.finish_and_clear();
            }
        }
    }

    /// One more unit done (committed, skipped or failed).
    pub fn unit_done(&self) {
        if let Ok(units) = self.units.lock() {
            if let Some(bar) = units.as_ref() {
                bar.inc(1);
            }
        }
    }

    /// The step's units are done: its bar goes.
    pub fn finish_units(&self) {
        if let Ok(mut units) = self.units.lock() {
            if let Some(bar) = units.take() {
                bar.finish_and_clear();
            }
        }
    }

    /// Prints a line above the bars (or plainly when there are none).
    pub fn println(&self, line: &str) {
        match &self.bars {
            Some(bars) => {
                let _ = bars.println(line);
            }
            None => eprintln!("{line}"),
        }
    }

    pub fn finish(&self) {
        self.done.store(true, Ordering::Relaxed);
        if let Some(bar) = &self.query {
            bar.finish_and_clear();
        }
        self.finish_units();
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}
