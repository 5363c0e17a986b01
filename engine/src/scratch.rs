//! Scratch paths: what a run writes under a temporary name (an output before its rename, a folder
//! output being staged, the spill folder), and how none of it outlives the run.
//!
//! * A run removes its scratch paths when it ends, whether it succeeded or failed (the owners'
//!   `Drop`).
//! * An abrupt end (a second Ctrl-C, see the CLI) calls [`remove_all_now`], which removes every
//!   scratch path still registered without waiting on anything the running query may hold.
//! * A killed run (kill -9, OOM, power loss) cannot clean up. Its temporary outputs are held
//!   under an advisory lock (`flock`) for as long as their run has them open, and a later run
//!   that writes to the same target removes those whose lock is free ([`remove_abandoned`]). A
//!   lock dies with its process, so this works whatever the pids are (a run in a container is
//!   often pid 1, as the killed one was).
//! * A folder `.x.flow-old-*` is a previous output moved aside while a new one took its place:
//!   when the new one is not there (the run died between the two renames), the old one is put
//!   back instead of removed.

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::error::{Error, Result};

/// Scratch paths registered by this process, by registration number.
static REGISTERED: Mutex<Option<HashMap<u64, PathBuf>>> = Mutex::new(None);
static NEXT: AtomicU64 = AtomicU64::new(0);

/// A path registered for removal at an abrupt end; unregistered on drop (the owner removes or
/// keeps the path itself).
#[derive(Debug)]
pub(crate) struct Registration(u64);

impl Registration {
    pub(crate) fn new(path: &Path) -> Registration {
        let id = NEXT.fetch_add(1, Ordering::Relaxed);
        let mut map = REGISTERED.lock().unwrap_or_else(|e| e.into_inner());
        map.get_or_insert_with(HashMap::new).insert(id, path.to_path_buf());
        Registration(id)
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut map = REGISTERED.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(map) = map.as_mut() {
            map.remove(&self.0);
        }
    }
}

/// Removes every scratch path this process has registered, for an exit that will not run the
/// owners' `Drop` (a second Ctrl-C). Does not wait for the registry if another thread holds it
/// (a thread stopped mid-registration by the same signal): then nothing is removed.
pub fn remove_all_now() {
    let Ok(map) = REGISTERED.try_lock() else { return };
    for path in map.iter().flat_map(|m| m.values()) {
        let _ = remove_any(path);
    }
}

/// A temporary path held under this run's lock: a file being written or a folder being filled.
/// Removed on drop unless [`kept`](Scratch::keep).
#[derive(Debug)]
pub(crate) struct Scratch {
    path: PathBuf,
    /// Holds the advisory lock that tells other runs this path is alive.
    _lock: File,
    registration: Option<Registration>,
}

impl Scratch {
    /// Creates the file `path` (truncating it) and returns it with its scratch guard.
    pub(crate) fn file(path: PathBuf) -> Result<(Scratch, File)> {
        let file = File::create(&path).map_err(|e| Error::io(&path, e))?;
        let lock = file.try_clone().map_err(|e| Error::io(&path, e))?;
        let scratch = Scratch::locked(path, lock)?;
        Ok((scratch, file))
    }

    /// Creates the folder `path` (and its parents).
    pub(crate) fn dir(path: PathBuf) -> Result<Scratch> {
        std::fs::create_dir_all(&path).map_err(|e| Error::io(&path, e))?;
        let lock = File::open(&path).map_err(|e| Error::io(&path, e))?;
        Scratch::locked(path, lock)
    }

    fn locked(path: PathBuf, lock: File) -> Result<Scratch> {
        let registration = Some(Registration::new(&path));
        let scratch = Scratch { path, _lock: lock, registration };
        // SAFETY: flock on a descriptor this value owns.
        if unsafe { libc::flock(scratch._lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(Error::io(&scratch.path, std::io::Error::last_os_error()));
        }
        Ok(scratch)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The path was moved into place (or is gone): do not remove it on drop.
    pub(crate) fn keep(mut self) {
        self.registration = None;
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if self.registration.take().is_some() {
            let _ = remove_any(&self.path);
        }
    }
}

pub(crate) fn remove_any(path: &Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) => Err(e),
    }
}

/// A fresh scratch name beside `target`: `.<name>.flow-<what>-<pid>-<n>`.
pub(crate) fn name_beside(target: &Path, what: &str) -> PathBuf {
    let name = target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "out".into());
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    parent_of(target).join(format!(".{name}.flow-{what}-{}-{n}", std::process::id()))
}

/// The folder `target` is in (`.` for a bare name).
pub(crate) fn parent_of(target: &Path) -> PathBuf {
    match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Removes the scratch paths that runs which died left beside `target` (see the module docs).
/// Best effort: what cannot be read or removed is left alone.
pub(crate) fn remove_abandoned(target: &Path) {
    let Some(name) = target.file_name().map(|n| n.to_string_lossy().into_owned()) else { return };
    let parent = parent_of(target);
    let Ok(entries) = std::fs::read_dir(&parent) else { return };
    let prefix = format!(".{name}.flow-");
    for entry in entries.flatten() {
        let file_name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = file_name.strip_prefix(&prefix) else { continue };
        let path = entry.path();
        if rest.starts_with("tmp-") {
            if !in_use(&path) {
                let _ = remove_any(&path);
            }
        } else if rest.starts_with("old-") && !owner_alive(rest) {
            // Moved aside by a run that is gone: put back when its replacement never came.
            if std::fs::symlink_metadata(target).is_err() {
                let _ = std::fs::rename(&path, target);
            } else {
                let _ = remove_any(&path);
            }
        }
    }
}

/// Whether a live run holds the lock of a scratch path.
fn in_use(path: &Path) -> bool {
    let Ok(file) = File::open(path) else { return true };
    // SAFETY: flock on a descriptor owned by `file`; the lock goes with it.
    unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) != 0 }
}

/// For `old-<pid>-<n>`: whether that process may still be running. This process counts as dead
/// for folders it did not register (a pid reused, in a container).
fn owner_alive(rest: &str) -> bool {
    let pid = rest.split('-').nth(1).and_then(|p| p.parse::<i32>().ok()).unwrap_or(0);
    if pid == std::process::id() as i32 {
        let map = REGISTERED.lock().unwrap_or_else(|e| e.into_inner());
        return map.iter().flat_map(|m| m.values()).any(|p| p.to_string_lossy().contains(rest));
    }
    crate::spill::process_alive(pid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scratch_file_is_removed_unless_kept_and_locked_while_held() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("out.parquet");
        let (scratch, _file) = Scratch::file(name_beside(&target, "tmp")).unwrap();
        let path = scratch.path().to_path_buf();
        assert!(in_use(&path));
        // A live run's file survives another run's sweep.
        remove_abandoned(&target);
        assert!(path.exists());
        drop(scratch);
        assert!(!path.exists());
        let (scratch, file) = Scratch::file(name_beside(&target, "tmp")).unwrap();
        let path = scratch.path().to_path_buf();
        scratch.keep();
        drop(file);
        assert!(path.exists());
        assert!(!in_use(&path));
        // Nobody holds it any more: the next writer to the target removes it.
        remove_abandoned(&target);
        assert!(!path.exists());
    }

    #[test]
    fn an_abandoned_old_output_is_put_back_when_its_replacement_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("out");
        let old = dir.path().join(".out.flow-old-999999999-3");
        std::fs::create_dir_all(old.join("a")).unwrap();
        remove_abandoned(&target);
        assert!(target.join("a").is_dir());
        assert!(!old.exists());
        std::fs::create_dir_all(&old).unwrap();
        remove_abandoned(&target);
        assert!(!old.exists());
        assert!(target.join("a").is_dir());
    }

    #[test]
    fn remove_all_now_removes_registered_paths() {
        let dir = tempfile::tempdir().unwrap();
        let scratch = Scratch::dir(dir.path().join(".x.flow-tmp-1-1")).unwrap();
        std::fs::write(scratch.path().join("f"), "x").unwrap();
        remove_all_now();
        assert!(!scratch.path().exists());
    }
}
