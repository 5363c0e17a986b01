//! Outputs appear complete or not at all: a file is written under a temporary name beside its
//! target (a folder in a hidden folder beside it) and renamed into place when complete; only a
//! regular file, or nothing, is ever renamed over.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::{Overwrite, WriteOptions, WriteSummary};
use crate::error::{Error, Result};
use crate::scratch::{self, name_beside, remove_any, Scratch};

/// A temporary file beside the target; removed on drop unless committed.
pub(crate) struct PendingFile {
    temp: Scratch,
    target: PathBuf,
    /// Fail at commit rather than replace a file that appeared at the target meanwhile.
    no_clobber: bool,
}

impl PendingFile {
    fn create(target: &Path) -> Result<(PendingFile, File)> {
        let parent = scratch::parent_of(target);
        std::fs::create_dir_all(&parent).map_err(|e| Error::io(&parent, e))?;
        check_target(target)?;
        scratch::remove_abandoned(target);
        let (temp, file) = Scratch::file(scratch::name_beside(target, "tmp"))?;
        Ok((PendingFile { temp, target: target.to_path_buf(), no_clobber: false }, file))
    }

    /// Makes the file durable and moves it into place.
    fn commit(self, file: &File) -> Result<u64> {
        let temp = self.temp.path();
        file.sync_all().map_err(|e| Error::io(temp, e))?;
        let bytes = file.metadata().map_err(|e| Error::io(temp, e))?.len();
        // Checked again: what is at the target may have changed while the query ran.
        check_target(&self.target)?;
        if self.no_clobber {
            // A hard link fails when the target exists: no check-then-rename race.
            match std::fs::hard_link(temp, &self.target) {
                Ok(()) => {
                    let _ = std::fs::remove_file(temp);
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Err(exists_error(&self.target)),
                // File systems without hard links: check, then rename.
                Err(_) if self.target.exists() => return Err(exists_error(&self.target)),
                Err(_) => std::fs::rename(temp, &self.target).map_err(|e| Error::io(&self.target, e))?,
            }
        } else {
            std::fs::rename(temp, &self.target).map_err(|e| Error::io(&self.target, e))?;
        }
        self.temp.keep();
        if let Ok(dir) = File::open(scratch::parent_of(&self.target)) {
            let _ = dir.sync_all();
        }
        Ok(bytes)
    }
}

/// An output file replaces only a regular file (or nothing): never a folder, a device, a fifo or
/// a symbolic link, which a rename would put the output in place of (see [`Destination::file`]
/// for how those are written).
pub(super) fn check_target(target: &Path) -> Result<()> {
    let Ok(meta) = std::fs::symlink_metadata(target) else { return Ok(()) };
    let what = if meta.is_dir() {
        "is a directory"
    } else if meta.file_type().is_symlink() {
        "is a symbolic link"
    } else if !meta.is_file() {
        "is not a regular file"
    } else {
        return Ok(());
    };
    Err(Error::io(target, std::io::Error::other(what)))
}

/// A temporary folder beside a target folder, where a folder output is written before it is moved
/// into place; removed on drop unless committed. Its name starts with a dot, which readers of
/// folders (pyarrow, DuckDB, Spark) skip.
pub struct StagingDir {
    scratch: Scratch,
}

/// Puts `from` at `to`, replacing what is there: the old one is renamed aside first and removed
/// once the new one is in place (put back if that fails).
pub(super) fn swap_into(from: &Path, to: &Path) -> Result<()> {
    match std::fs::symlink_metadata(to) {
        Ok(m) if !m.is_dir() => check_target(to)?,
        _ => {}
    }
    if std::fs::symlink_metadata(to).is_err() {
        if let Some(parent) = to.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        }
        return std::fs::rename(from, to).map_err(|e| Error::io(to, e));
    }
    let old = name_beside(to, "old");
    std::fs::rename(to, &old).map_err(|e| Error::io(to, e))?;
    if let Err(e) = std::fs::rename(from, to) {
        let _ = std::fs::rename(&old, to);
        return Err(Error::io(to, e));
    }
    remove_any(&old).map_err(|e| Error::io(&old, e))
}

impl StagingDir {
    /// Creates the folder beside `target` (creating `target`'s parent folders).
    pub fn beside(target: &Path) -> Result<StagingDir> {
        scratch::remove_abandoned(target);
        Ok(StagingDir { scratch: Scratch::dir(name_beside(target, "tmp"))? })
    }

    /// The folder to write in.
    pub fn path(&self) -> &Path {
        self.scratch.path()
    }

    /// Moves what was written (`written`, paths inside the staging folder) into `target` as
    /// `overwrite` says; returns the summaries with their final paths.
    pub fn commit(self, target: &Path, overwrite: Overwrite, written: &[WriteSummary]) -> Result<Vec<WriteSummary>> {
        let staged = self.path();
        let relative = |p: &Path| p.strip_prefix(staged).map(Path::to_path_buf).unwrap_or_else(|_| p.to_path_buf());
        match overwrite {
            Overwrite::Error => {
                if target_taken(target) {
                    return Err(exists_error(target));
                }
                if target.is_dir() {
                    std::fs::remove_dir(target).map_err(|e| Error::io(target, e))?;
                }
                std::fs::rename(staged, target).map_err(|e| Error::io(target, e))?;
            }
            Overwrite::Replace => swap_into(staged, target)?,
            Overwrite::ReplacePartitions if !target.is_dir() => swap_into(staged, target)?,
            Overwrite::ReplacePartitions => {
                // Each partition folder that got files replaces its namesake; the rest stay.
                let leaves: std::collections::BTreeSet<PathBuf> =
                    written.iter().filter_map(|w| relative(&w.path).parent().map(Path::to_path_buf)).collect();
                for leaf in leaves {
                    if leaf.as_os_str().is_empty() {
                        continue;
                    }
                    swap_into(&staged.join(&leaf), &target.join(&leaf))?;
                }
                // Files at the top (there are none with partition_by; kept for completeness).
                for w in written {
                    let rel = relative(&w.path);
                    if rel.parent().is_none_or(|p| p.as_os_str().is_empty()) {
                        swap_into(&w.path, &target.join(&rel))?;
                    }
                }
                let _ = std::fs::remove_dir_all(staged);
            }
        }
        let written =
            written.iter().map(|w| WriteSummary { path: target.join(relative(&w.path)), ..w.clone() }).collect();
        self.scratch.keep();
        if let Ok(dir) = File::open(target.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."))) {
            let _ = dir.sync_all();
        }
        Ok(written)
    }
}

/// The error for a target that exists under `overwrite = "error"`.
pub fn exists_error(target: &Path) -> Error {
    Error::Config(format!(
        "output {} already exists (overwrite policy 'error'; hint: remove it, or use overwrite 'replace')",
        target.display()
    ))
}

/// Whether `target` exists as something a write would overwrite: a file, or a folder that is not
/// empty.
pub fn target_taken(target: &Path) -> bool {
    match std::fs::metadata(target) {
        Ok(m) if m.is_dir() => std::fs::read_dir(target).map(|mut d| d.next().is_some()).unwrap_or(true),
        Ok(_) => true,
        Err(_) => false,
    }
}

/// Where a file sink's bytes go: a file under a temporary name, moved into place when complete,
/// or a stream (standard output) that takes them as they come.
pub(crate) enum Destination {
    /// A file.
    File(PendingFile, File),
    /// A file in a staging folder (see [`Destination::staged`]).
    Staged(PathBuf, File),
    /// A stream; its summary's path is `-`.
    Stream(Box<dyn Write + Send>),
}

impl Destination {
    /// A file at `target`, written beside it first and renamed into place. A symbolic link is
    /// followed (the file it points to is replaced, the link stays); a device or a pipe
    /// (`/dev/null`, a fifo) is written into as a stream; a folder is an error.
    pub(crate) fn file(target: &Path, options: &WriteOptions) -> Result<Destination> {
        use std::os::unix::fs::FileTypeExt;
        let mut target = target.to_path_buf();
        if let Ok(meta) = std::fs::metadata(&target) {
            let kind = meta.file_type();
            if kind.is_char_device() || kind.is_fifo() {
                let file = File::options().write(true).open(&target).map_err(|e| Error::io(&target, e))?;
                return Ok(Destination::Stream(Box::new(file)));
            }
            if std::fs::symlink_metadata(&target).is_ok_and(|m| m.file_type().is_symlink()) {
                target = std::fs::canonicalize(&target).map_err(|e| Error::io(&target, e))?;
            }
        }
        let (mut pending, file) = PendingFile::create(&target)?;
        pending.no_clobber = options.overwrite == Overwrite::Error;
        Ok(Destination::File(pending, file))
    }

    /// A file at `target` inside a staging folder, which is moved into place whole: created at
    /// its name, made durable with the others by [`make_durable`].
    pub(crate) fn staged(target: &Path) -> Result<Destination> {
        let parent = scratch::parent_of(target);
        std::fs::create_dir_all(&parent).map_err(|e| Error::io(&parent, e))?;
        let file = File::create(target).map_err(|e| Error::io(target, e))?;
        Ok(Destination::Staged(target.to_path_buf(), file))
    }

    pub(super) fn split(self) -> (Option<PendingFile>, PathBuf, Out) {
        match self {
            Destination::File(pending, file) => {
                let target = pending.target.clone();
                (Some(pending), target, Out::File(file))
            }
            Destination::Staged(target, file) => (None, target, Out::File(file)),
            Destination::Stream(stream) => (None, PathBuf::from("-"), Out::Stream(stream, 0)),
        }
    }
}

/// The writer behind a sink (see [`Destination`]).
pub(super) enum Out {
    File(File),
    /// A stream and the bytes written to it.
    Stream(Box<dyn Write + Send>, u64),
}

impl Write for Out {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Out::File(f) => f.write(buf),
            Out::Stream(s, bytes) => {
                let n = s.write(buf)?;
                *bytes += n as u64;
                Ok(n)
            }
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Out::File(f) => f.flush(),
            Out::Stream(s, _) => s.flush(),
        }
    }
}

/// Completes what a sink wrote to `out`: a file is made durable and moved into place, a stream
/// flushed. Returns the bytes written.
pub(super) fn complete(pending: Option<PendingFile>, target: &Path, out: Out) -> Result<u64> {
    match (pending, out) {
        (Some(pending), Out::File(file)) => pending.commit(&file),
        (_, mut out) => {
            out.flush().map_err(|e| Error::io(target, e))?;
            match out {
                Out::Stream(_, bytes) => Ok(bytes),
                // A staged file: durable later, with the others.
                Out::File(file) => Ok(file.metadata().map_err(|e| Error::io(target, e))?.len()),
            }
        }
    }
}

/// Makes the staged files `written` under `dir` durable, and their folders' entries: one
/// `syncfs` of the file system on Linux (a single flush, where an fsync per file and per folder
/// waited for each in turn), else an fsync of each file and folder.
pub(crate) fn make_durable(dir: &Path, written: &[WriteSummary]) -> Result<()> {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let folder = File::open(dir).map_err(|e| Error::io(dir, e))?;
        // SAFETY: syncfs on a descriptor `folder` owns.
        if unsafe { libc::syncfs(folder.as_raw_fd()) } == 0 {
            return Ok(());
        }
    }
    let mut folders = std::collections::BTreeSet::new();
    for w in written {
        File::open(&w.path).and_then(|f| f.sync_all()).map_err(|e| Error::io(&w.path, e))?;
        let mut at = w.path.parent();
        while let Some(folder) = at.filter(|f| f.starts_with(dir)) {
            folders.insert(folder.to_path_buf());
            at = folder.parent();
        }
    }
    for folder in folders {
        File::open(&folder).and_then(|f| f.sync_all()).map_err(|e| Error::io(&folder, e))?;
    }
    Ok(())
}
