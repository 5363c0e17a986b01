//! Progress on stderr, only when it is a terminal: rows and bytes read, memory in use, spilled bytes.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flow_engine::{human, Engine};
use indicatif::{ProgressBar, ProgressStyle};

pub struct Progress {
    bar: Option<ProgressBar>,
    step: Arc<Mutex<String>>,
    done: Arc<AtomicBool>,
}

impl Progress {
    pub fn start(engine: &Engine) -> Progress {
        let step = Arc::new(Mutex::new(String::new()));
        let done = Arc::new(AtomicBool::new(false));
        if !std::io::stderr().is_terminal() {
            return Progress { bar: None, step, done };
        }
        let bar = ProgressBar::new_spinner();
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
        Progress { bar: Some(bar), step, done }
    }

    pub fn set_step(&self, name: &str) {
        if let Ok(mut s) = self.step.lock() {
            *s = name.to_string();
        }
    }

    pub fn finish(&self) {
        self.done.store(true, Ordering::Relaxed);
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}
