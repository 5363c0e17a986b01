//! Ctrl-C and SIGTERM.
//!
//! The first one asks the run to stop: the handler only counts it, and a watcher thread sets the
//! engine's cancel flag, so workers stop at their next batch, outputs are never left half-written
//! (sinks rename only when complete) and every spill and temporary file is removed as the run
//! unwinds; the process exits with 130.
//!
//! The second one ends the process at once, whatever the engine is doing: the watcher removes the
//! scratch paths still registered (temporary outputs, the spill folder; see
//! `flow_engine::scratch`) and exits with 130. A third one, should the watcher itself be stuck,
//! exits from the signal handler.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

static SIGNALS: AtomicUsize = AtomicUsize::new(0);

/// The cancel flags of the engines this process runs.
static FLAGS: Mutex<Vec<Arc<AtomicBool>>> = Mutex::new(Vec::new());

/// How often the watcher looks at the count: short enough to feel immediate.
const POLL: Duration = Duration::from_millis(20);

const EXIT_INTERRUPTED: i32 = 130;

extern "C" fn on_signal(_: libc::c_int) {
    // Only async-signal-safe calls here: an atomic and _exit.
    if SIGNALS.fetch_add(1, Ordering::SeqCst) >= 2 {
        // SAFETY: _exit is async-signal-safe.
        unsafe { libc::_exit(EXIT_INTERRUPTED) };
    }
}

/// Installs the SIGINT and SIGTERM handlers and starts the watcher.
pub fn install() {
    // SAFETY: the handler only touches an atomic and calls _exit, both async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    std::thread::Builder::new()
        .name("flow-signals".into())
        .spawn(|| {
            let mut cancelled = false;
            loop {
                let n = SIGNALS.load(Ordering::SeqCst);
                if n >= 1 && !cancelled {
                    // try_lock: a thread stopped while registering must not block the watcher.
                    if let Ok(flags) = FLAGS.try_lock() {
                        flags.iter().for_each(|f| f.store(true, Ordering::SeqCst));
                        cancelled = true;
                    }
                }
                if n >= 2 {
                    exit_now();
                }
                std::thread::sleep(POLL);
            }
        })
        .expect("start the signal watcher");
}

/// The second signal: remove what the run wrote under temporary names and exit, without waiting
/// for anything the run's threads hold (the stderr lock included: written to fd 2 directly).
fn exit_now() -> ! {
    flow_engine::scratch::remove_all_now();
    let message = b"error: interrupted again: stopped at once\n";
    // SAFETY: a write of a valid buffer to fd 2, then _exit, which skips destructors that could
    // wait on locks the other threads hold.
    unsafe {
        libc::write(2, message.as_ptr().cast(), message.len());
        libc::_exit(EXIT_INTERRUPTED)
    }
}

/// Whether Ctrl-C was pressed.
pub fn interrupted() -> bool {
    SIGNALS.load(Ordering::SeqCst) > 0
}

/// Sets `cancel` once an interrupt arrives (at once if one already has).
pub fn watch(cancel: Arc<AtomicBool>) {
    if interrupted() {
        cancel.store(true, Ordering::SeqCst);
    }
    FLAGS.lock().unwrap_or_else(|e| e.into_inner()).push(cancel);
}
