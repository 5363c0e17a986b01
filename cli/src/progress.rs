//! Progress on stderr, only when it is a terminal: for a step with units, a bar over its units
//! (with ETA); for the query running now, rows and bytes read, memory in use, spilled bytes.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
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
}

impl Progress {
    pub fn start(engine: &Engine) -> Progress {
        let step = Arc::new(Mutex::new(String::new()));
        let done = Arc::new(AtomicBool::new(false));
        if !std::io::stderr().is_terminal() {
            return Progress { bars: None, query: None, units: Mutex::new(None), step, done };
        }
        let bars = MultiProgress::new();
        let bar = bars.add(ProgressBar::new_spinner());
        bar.set_style(ProgressStyle::with_template("{spinner} [{elapsed_precise}] {msg}").expect("valid template"));
        bar.enable_steady_tick(Duration::from_millis(120));
        let (b, s, d) = (bar.clone(), step.clone(), done.clone());
        let counters = engine.counters().clone();
        let pool = engine.pool().clone();
        let spill = engine.spill().clone();
        std::thread::spawn(move || {
            while !d.load(Ordering::Relaxed) {
                let step = s.lock().map(|s| s.clone()).unwrap_or_default();
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
        Progress { bars: Some(bars), query: Some(bar), units: Mutex::new(None), step, done }
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
        if let Ok(mut units) = self.units.lock() {
            if let Some(bar) = units.take() {
                bar.finish_and_clear();
            }
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}
