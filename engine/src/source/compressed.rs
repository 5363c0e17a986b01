//! Compressed text inputs: CSV and NDJSON files ending in `.gz` (gzip, several members allowed,
//! as `cat a.gz b.gz` makes) or `.zst`/`.zstd` (zstd), decompressed as they are read.
//!
//! A compressed file cannot be cut into slices that start at a record, so it is one morsel,
//! read by one worker. The decoder's memory counts with the scan's read buffer (see
//! [`decoder_bytes`]): gzip keeps a 32 KiB window; zstd a window its frame header names (8 MiB
//! for levels up to 19), which is read from the header before anything is decoded, and a frame
//! asking for more than [`MAX_ZSTD_WINDOW`] is refused with an error rather than allocated.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use crate::error::{Error, Result};

/// How a text file is compressed, from its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    pub(crate) fn of(path: &Path) -> Compression {
        let name = path.to_string_lossy().to_ascii_lowercase();
        if name.ends_with(".gz") {
            Compression::Gzip
        } else if name.ends_with(".zst") || name.ends_with(".zstd") {
            Compression::Zstd
        } else {
            Compression::None
        }
    }
}

/// `path` without a compression suffix (`x.csv.gz` is `x.csv`), to tell the format from.
pub(crate) fn without_suffix(path: &str) -> &str {
    let lower = path.to_ascii_lowercase();
    for suffix in [".gz", ".zstd", ".zst"] {
        if lower.ends_with(suffix) {
            return &path[..path.len() - suffix.len()];
        }
    }
    path
}

/// The largest zstd window flow decodes with (levels up to 19 use 8 MiB at most; `--long`
/// and `--ultra` frames may ask for more).
pub(crate) const MAX_ZSTD_WINDOW: u64 = 128 << 20;

/// The decoder's own buffers beside its window.
const DECODER_BUFFERS: u64 = 256 << 10;

/// Memory a reader of `path` holds beside the scan's read buffer: its decoder's window and
/// buffers (nothing for a file that is not compressed).
pub(crate) fn decoder_bytes(path: &Path) -> u64 {
    match Compression::of(path) {
        Compression::None => 0,
        Compression::Gzip => (32 << 10) + DECODER_BUFFERS,
        Compression::Zstd => zstd_window(path).unwrap_or(8 << 20).min(MAX_ZSTD_WINDOW) + DECODER_BUFFERS,
    }
}

/// The window the first zstd frame of `path` asks for, from its header (RFC 8878, 3.1.1.1).
fn zstd_window(path: &Path) -> Option<u64> {
    let mut header = Vec::with_capacity(18);
    File::open(path).ok()?.take(18).read_to_end(&mut header).ok()?;
    if header.len() < 6 || header[..4] != [0x28, 0xB5, 0x2F, 0xFD] {
        return None;
    }
    let descriptor = header[4];
    let single_segment = descriptor & 0x20 != 0;
    if !single_segment {
        let w = header[5];
        let log = 10 + u64::from(w >> 3);
        let base = 1u64 << log;
        return Some(base + base / 8 * u64::from(w & 7));
    }
    // One segment: the window is the frame's content size.
    let dict_bytes = [0usize, 1, 2, 4][usize::from(descriptor & 3)];
    let size_bytes = [1usize, 2, 4, 8][usize::from(descriptor >> 6)];
    let at = 5 + dict_bytes;
    let field = header.get(at..at + size_bytes)?;
    let mut value = 0u64;
    for (i, b) in field.iter().enumerate() {
        value |= u64::from(*b) << (8 * i);
    }
    Some(if size_bytes == 2 { value + 256 } else { value })
}

/// Opens `path` for reading its text, decompressing as it goes.
pub(crate) fn open(path: &Path) -> Result<Box<dyn Read + Send>> {
    let file = File::open(path).map_err(|e| Error::bad_file(path, e))?;
    Ok(match Compression::of(path) {
        Compression::None => Box::new(file),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(std::io::BufReader::new(file))),
        Compression::Zstd => {
            let mut decoder = zstd::stream::read::Decoder::new(file).map_err(|e| Error::bad_file(path, e))?;
            decoder.window_log_max(MAX_ZSTD_WINDOW.ilog2()).map_err(|e| Error::bad_file(path, e))?;
            Box::new(Named { inner: decoder, path: path.to_path_buf() })
        }
    })
}

/// A zstd decoder whose errors say what went wrong in terms a user can act on.
struct Named<R> {
    inner: R,
    path: std::path::PathBuf,
}

impl<R: Read> Read for Named<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.inner.read(buf).map_err(|e| {
            let text = e.to_string();
            let hint = if text.contains("Frame requires too much memory") {
                format!(" (its window is over the {} flow decodes with)", crate::error::human(MAX_ZSTD_WINDOW))
            } else {
                String::new()
            };
            std::io::Error::new(e.kind(), format!("zstd: {text}{hint} in {}", self.path.display()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn gzip_and_zstd_files_read_back_and_name_their_windows() {
        let dir = tempfile::tempdir().unwrap();
        let text = "a,b\n1,x\n2,y\n".repeat(1000);
        let gz = dir.path().join("t.csv.gz");
        let mut e = flate2::write::GzEncoder::new(File::create(&gz).unwrap(), flate2::Compression::default());
        e.write_all(text.as_bytes()).unwrap();
        e.finish().unwrap();
        let zst = dir.path().join("t.csv.zst");
        std::fs::write(&zst, zstd::encode_all(text.as_bytes(), 3).unwrap()).unwrap();
        for path in [&gz, &zst] {
            let mut back = String::new();
            open(path).unwrap().read_to_string(&mut back).unwrap();
            assert_eq!(back, text);
            assert!(decoder_bytes(path) > 0);
        }
        // A one-segment frame names its content size as its window.
        assert_eq!(zstd_window(&zst), Some(text.len() as u64));
        assert_eq!(without_suffix("x.CSV.GZ"), "x.CSV");
        assert_eq!(Compression::of(Path::new("x.csv")), Compression::None);
    }
}
