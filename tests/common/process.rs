//! Running the real `flow` binary and measuring its peak RSS (for the flow-cli tests only).
#![allow(dead_code)]

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The `flow` binary built for these tests, or the one `FLOW_TEST_BINARY` names (a copy, for a
/// long fuzz run that must not see the binary rebuilt under it).
pub fn flow_bin() -> PathBuf {
    std::env::var_os("FLOW_TEST_BINARY").map_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_flow")), PathBuf::from)
}

/// What a finished `flow` process did.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    /// Peak resident set size in bytes, as the kernel reports it for the child (`ru_maxrss`).
    pub max_rss: u64,
}

/// Runs `flow` with `args` in `dir`, without inheriting FLOW_* settings from the environment.
pub fn flow(dir: &Path, args: &[&str]) -> Run {
    flow_env(dir, args, &[])
}

/// Runs `flow` with extra environment variables.
pub fn flow_env(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Run {
    let out_path = dir.join(".stdout");
    let err_path = dir.join(".stderr");
    let mut cmd = Command::new(flow_bin());
    cmd.args(args)
        .current_dir(dir)
        .env_remove("FLOW_MEM_BUDGET")
        .env_remove("FLOW_THREADS")
        .stdin(Stdio::null())
        .stdout(File::create(&out_path).unwrap())
        .stderr(File::create(&err_path).unwrap());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd.spawn().expect("start flow");
    // Reaped by wait4 below (std's wait would not report the child's rusage).
    let pid = child.id() as i32;
    std::mem::forget(child);
    let (code, max_rss) = wait_with_rusage(pid);
    Run {
        code,
        stdout: String::from_utf8_lossy(&std::fs::read(&out_path).unwrap()).into_owned(),
        stderr: std::fs::read_to_string(&err_path).unwrap(),
        max_rss,
    }
}

/// Waits for one child and returns its exit code (128 + signal when killed) and peak RSS in bytes.
pub fn wait_with_rusage(pid: i32) -> (i32, u64) {
    let mut status = 0;
    // SAFETY: plain syscalls on a child of this process, with valid out-pointers.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(r, pid, "wait4 failed");
    let code = if libc::WIFEXITED(status) { libc::WEXITSTATUS(status) } else { 128 + libc::WTERMSIG(status) };
    (code, usage.ru_maxrss as u64 * 1024)
}

/// Starts `flow` and returns its pid, for tests that signal it; reap it with [`wait_with_rusage`].
pub fn spawn_flow(dir: &Path, args: &[&str]) -> i32 {
    let child = Command::new(flow_bin())
        .args(args)
        .current_dir(dir)
        .env_remove("FLOW_MEM_BUDGET")
        .env_remove("FLOW_THREADS")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(dir.join(".stderr")).unwrap())
        .spawn()
        .expect("start flow");
    let pid = child.id() as i32;
    std::mem::forget(child);
    pid
}

/// Asserts the promise on a finished run that wrote `report.json` in `dir`: peak RSS within
/// `1.1 * budget + 24 MiB`. The peak is the process's own (`VmHWM`, in the report): the figure
/// `wait4` gives for a child can include pages of the parent it was spawned from, and this test
/// process holds the data other tests are generating.
pub fn assert_rss_within(run: &Run, dir: &Path, budget: u64, what: &str) {
    const MIB: u64 = 1 << 20;
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).expect("the run wrote report.json"))
            .unwrap();
    let peak = report["peak_rss"].as_u64().expect("the report has peak_rss");
    let limit = budget + budget / 10 + 24 * MIB;
    eprintln!(
        "{what}: peak RSS {:.1} MiB (limit {} MiB); {}",
        peak as f64 / MIB as f64,
        limit / MIB,
        run.stderr.trim()
    );
    assert!(peak <= limit, "{what}: peak RSS {} MiB > limit {} MiB; {}", peak / MIB, limit / MIB, run.stderr);
}

/// Runs `flow` like [`flow`], but kills it (and fails the test) when it has not ended within
/// `seconds`: for the cases that used to hang.
pub fn flow_within(dir: &Path, args: &[&str], seconds: u64) -> Run {
    let out_path = dir.join(".stdout");
    let err_path = dir.join(".stderr");
    let mut child = Command::new(flow_bin())
        .args(args)
        .current_dir(dir)
        .env_remove("FLOW_MEM_BUDGET")
        .env_remove("FLOW_THREADS")
        .stdin(Stdio::null())
        .stdout(File::create(&out_path).unwrap())
        .stderr(File::create(&err_path).unwrap())
        .spawn()
        .expect("start flow");
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed().as_secs() >= seconds {
            let _ = child.kill();
            let _ = child.wait();
            panic!("flow {args:?} did not end within {seconds} s");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    use std::os::unix::process::ExitStatusExt;
    let code = status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
    Run {
        code,
        stdout: std::fs::read_to_string(&out_path).unwrap(),
        stderr: std::fs::read_to_string(&err_path).unwrap(),
        max_rss: 0,
    }
}

/// Whether process `pid` (a child not yet reaped) has ended, without reaping it.
pub fn has_exited(pid: i32) -> bool {
    // SAFETY: waitid with WNOWAIT only looks at the child's state.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    let r = unsafe {
        libc::waitid(libc::P_PID, pid as libc::id_t, &mut info, libc::WEXITED | libc::WNOHANG | libc::WNOWAIT)
    };
    r == 0 && unsafe { info.si_pid() } == pid
}
