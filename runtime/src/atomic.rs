//! Atomic file writes.
//!
//! Input: a destination path and bytes (or a closure that streams bytes into a writer).
//! Output: the destination holds exactly the new bytes, or (on any error) is left untouched.
//!
//! Invariants:
//! - Bytes go to a fresh temporary file in the *same directory* as the destination (so the final
//!   `rename` never crosses a filesystem and is atomic on POSIX), are flushed and `fsync`ed, and
//!   only then renamed over the destination. A reader therefore sees either the old file or the
//!   complete new one, never a half-written file, even if the process is killed mid-write.
//! - On failure the temporary file is removed; no stray `.tmp` files are left behind.
//! - The parent directory is never created implicitly: callers decide where output goes.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Distinguishes temp files of concurrent writers inside one process (threads writing the same
/// destination must not share a temp file); the pid distinguishes processes.
static COUNTER: AtomicU64 = AtomicU64::new(0);

/// Writes `bytes` to `path` atomically: temp file in the same directory, fsync, rename.
///
/// Fails (leaving `path` untouched) if the directory does not exist or is not writable.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut w = AtomicWriter::create(path)?;
    w.write_all(bytes)?;
    w.commit()
}

/// Streams into `path` atomically: `f` writes into a buffered writer on a temp file; if `f`
/// returns `Ok`, the temp file is fsynced and renamed over `path`, otherwise it is removed.
pub fn write_atomic_with<F>(path: &Path, f: F) -> io::Result<()>
where
    F: FnOnce(&mut dyn Write) -> io::Result<()>,
{
    let mut w = AtomicWriter::create(path)?;
    f(&mut w)?;
    w.commit()
}

/// A writer whose output only appears at its destination on [`AtomicWriter::commit`].
///
/// Dropping it without committing discards everything written (the temp file is removed).
pub struct AtomicWriter {
    dest: PathBuf,
    tmp: PathBuf,
    file: Option<BufWriter<File>>,
}

impl AtomicWriter {
    /// Creates the temp file next to `dest`. `dest` itself is not touched until `commit`.
    pub fn create(dest: &Path) -> io::Result<Self> {
        let file_name = dest
            .file_name()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("cannot write to {}: not a file path", dest.display())))?;
        let dir = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        // Hidden, unique name: never collides with a real output and is easy to recognise.
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(file_name);
        tmp_name.push(format!(".tmp.{}.{}", std::process::id(), n));
        let tmp = dir.join(tmp_name);
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|e| io::Error::new(e.kind(), format!("cannot create temp file {}: {e}", tmp.display())))?;
        Ok(Self { dest: dest.to_path_buf(), tmp, file: Some(BufWriter::with_capacity(1 << 16, file)) })
    }

    /// The destination this writer will replace on commit.
    pub fn dest(&self) -> &Path {
        &self.dest
    }

    /// Flushes, fsyncs and renames the temp file over the destination.
    pub fn commit(mut self) -> io::Result<()> {
        let Some(buf) = self.file.take() else {
            // Only reachable if commit ran before, which `self` by value rules out.
            return Err(io::Error::other("atomic writer already committed"));
        };
        let result = (|| {
            let file = buf.into_inner().map_err(|e| e.into_error())?;
            file.sync_all()?;
            drop(file);
            fs::rename(&self.tmp, &self.dest)?;
            sync_dir(&self.dest);
            Ok(())
        })();
        if result.is_err() {
            let _ = fs::remove_file(&self.tmp);
        }
        result
    }
}

impl Write for AtomicWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self.file.as_mut() {
            Some(f) => f.write(buf),
            None => Err(io::Error::other("atomic writer already committed")),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self.file.as_mut() {
            Some(f) => f.flush(),
            None => Ok(()),
        }
    }
}

impl Drop for AtomicWriter {
    fn drop(&mut self) {
        // Not committed: discard the partial output.
        if self.file.take().is_some() {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// Makes the rename durable by syncing the directory entry. Best effort: some filesystems (and
/// non-Unix platforms) do not allow opening a directory, and the rename has already happened.
fn sync_dir(dest: &Path) {
    #[cfg(unix)]
    {
        let dir = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
    #[cfg(not(unix))]
    let _ = dest;
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A fresh, empty directory under the system temp dir, unique per call.
    pub(crate) fn scratch_dir(tag: &str) -> PathBuf {
        static N: AtomicU64 = AtomicU64::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("circ-runtime-test-{tag}-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create scratch dir");
        dir
    }

    /// Announces a skipped test on the real stderr. `eprintln!` output of a passing test is
    /// swallowed by the test harness; a skip must be visible, so write to the handle directly.
    pub(crate) fn skip_loudly(why: &str) {
        let _ = writeln!(std::io::stderr(), "\n*** skipped: {why} ***\n");
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        v.sort();
        v
    }

    #[test]
    fn writes_and_replaces() {
        let dir = scratch_dir("atomic");
        let p = dir.join("a.txt");
        write_atomic(&p, b"first").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"first");
        write_atomic(&p, b"second, longer").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"second, longer");
        assert_eq!(entries(&dir), vec!["a.txt".to_string()], "no temp files left");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn failed_stream_leaves_old_file_and_no_temp() {
        let dir = scratch_dir("atomic-fail");
        let p = dir.join("b.bin");
        write_atomic(&p, b"old").unwrap();
        let err = write_atomic_with(&p, |w| {
            w.write_all(b"partial")?;
            Err(io::Error::other("boom"))
        })
        .unwrap_err();
        assert_eq!(err.to_string(), "boom");
        assert_eq!(fs::read(&p).unwrap(), b"old");
        assert_eq!(entries(&dir), vec!["b.bin".to_string()]);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn dropped_writer_discards() {
        let dir = scratch_dir("atomic-drop");
        let p = dir.join("c.bin");
        {
            let mut w = AtomicWriter::create(&p).unwrap();
            w.write_all(b"never").unwrap();
        }
        assert!(!p.exists());
        assert!(entries(&dir).is_empty());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn missing_directory_is_an_error() {
        let dir = scratch_dir("atomic-missing");
        let p = dir.join("no/such/dir/x");
        let err = write_atomic(&p, b"x").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert!(err.to_string().contains("no/such/dir"), "{err}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
