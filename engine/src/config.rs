//! Run configuration: the memory budget and everything else a run is sized by.

use std::path::PathBuf;

use crate::error::{Error, Result};

/// How a run is sized. Build one with [`Config::default`] and the `with_*` methods.
///
/// ```
/// use flow_engine::Config;
/// let config = Config::default()
///     .with_mem_budget(flow_engine::parse_size("512MiB").unwrap())
///     .with_threads(2);
/// assert_eq!(config.mem_budget, 512 * 1024 * 1024);
/// ```
#[derive(Debug, Clone)]
pub struct Config {
    /// The byte budget for every buffer that holds data during the run.
    pub mem_budget: u64,
    /// Worker threads (default: every core).
    pub threads: usize,
    /// Where spill files go (default: the system temp dir). Each run makes a private folder in it.
    pub spill_dir: PathBuf,
    /// Most bytes of spill files on disk at once (default: unlimited).
    pub max_spill: u64,
    /// Target rows per record batch.
    pub batch_size: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            mem_budget: default_mem_budget(),
            threads: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            spill_dir: std::env::temp_dir(),
            max_spill: u64::MAX,
            batch_size: 8192,
        }
    }
}

impl Config {
    /// Sets the memory budget in bytes.
    pub fn with_mem_budget(mut self, bytes: u64) -> Self {
        self.mem_budget = bytes;
        self
    }
    /// Sets the number of worker threads (at least one).
    pub fn with_threads(mut self, threads: usize) -> Self {
        self.threads = threads.max(1);
        self
    }
    /// Sets the folder that holds spill files.
    pub fn with_spill_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.spill_dir = dir.into();
        self
    }
    /// Sets the most bytes of spill files allowed on disk at once.
    pub fn with_max_spill(mut self, bytes: u64) -> Self {
        self.max_spill = bytes;
        self
    }
    /// Sets the target number of rows per record batch.
    pub fn with_batch_size(mut self, rows: usize) -> Self {
        self.batch_size = rows.max(1);
        self
    }
}

/// Parses a byte size: plain bytes (`1048576`), binary units (`512MiB`, `2.5GiB`, `64KiB`) or decimal
/// units (`3GB` is 3 000 000 000 bytes, as for disks; `3GiB` is 3 x 2^30). Units are case-insensitive.
/// An unknown unit is an error.
///
/// ```
/// assert_eq!(flow_engine::parse_size("2.5GiB").unwrap(), 2_684_354_560);
/// assert_eq!(flow_engine::parse_size("3GB").unwrap(), 3_000_000_000);
/// assert!(flow_engine::parse_size("3 parsecs").is_err());
/// ```
pub fn parse_size(text: &str) -> Result<u64> {
    let trimmed = text.trim();
    let bad =
        |why: &str| Error::Config(format!("invalid size '{text}': {why} (hint: use e.g. 512MiB, 3GiB or plain bytes)"));
    if trimmed.is_empty() {
        return Err(bad("empty"));
    }
    let split = trimmed.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    let value: f64 = number.parse().map_err(|_| bad("not a number"))?;
    let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" | "k" => 1_000,
        "mb" | "m" => 1_000_000,
        "gb" | "g" => 1_000_000_000,
        "tb" | "t" => 1_000_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        _ => return Err(bad(&format!("unknown unit '{}'", unit.trim()))),
    };
    let bytes = value * factor as f64;
    if !bytes.is_finite() || bytes > u64::MAX as f64 {
        return Err(bad("too large"));
    }
    Ok(bytes as u64)
}

/// Memory available to this process: the smaller of the machine's available memory and a cgroup limit.
pub fn available_memory() -> u64 {
    let mut best = meminfo_available().unwrap_or(4 << 30);
    for path in ["/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"] {
        if let Ok(text) = std::fs::read_to_string(path) {
            if let Ok(limit) = text.trim().parse::<u64>() {
                if limit > 0 {
                    best = best.min(limit);
                }
            }
        }
    }
    best
}

/// The budget used when none is given: half of the memory available to the process.
pub fn default_mem_budget() -> u64 {
    available_memory() / 2
}

fn meminfo_available() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("3GiB").unwrap(), 3 << 30);
        assert_eq!(parse_size("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_size("2.5GiB").unwrap(), 5 << 29);
        assert_eq!(parse_size("1234").unwrap(), 1234);
        assert_eq!(parse_size("1 gb").unwrap(), 1_000_000_000);
        assert_eq!(parse_size("64kib").unwrap(), 65536);
        for bad in ["", "GiB", "12 parsecs", "1.2.3MiB", "-5MiB"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }
}
