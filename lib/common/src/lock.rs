//! Exclusive advisory locks on lock files: `flock` (through `std::fs::File::lock`, the same lock
//! Python's `filelock` takes), released when dropped or when the process dies, so a killed holder
//! never leaves a stale lock behind.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::Path;

use crate::Failure;

/// A held lock on a file; the file stays open (and locked) until dropped.
pub struct FileLock {
    file: File,
}

impl FileLock {
    /// Take the lock if it is free; None while another process (or another open of the file)
    /// holds it. The lock file and its directory are created when missing.
    pub fn try_acquire(path: &Path) -> Result<Option<FileLock>, Failure> {
        let file = open(path)?;
        match file.try_lock() {
            Ok(()) => Ok(Some(FileLock { file })),
            Err(TryLockError::WouldBlock) => Ok(None),
            Err(TryLockError::Error(e)) => Err(Failure::io_at(path, "cannot lock", &e)),
        }
    }

    /// Take the lock, waiting for its holder to release it; `on_wait` runs once before waiting.
    pub fn acquire(path: &Path, on_wait: impl FnOnce()) -> Result<FileLock, Failure> {
        if let Some(lock) = Self::try_acquire(path)? {
            return Ok(lock);
        }
        on_wait();
        let file = open(path)?;
        file.lock().map_err(|e| Failure::io_at(path, "cannot lock", &e))?;
        Ok(FileLock { file })
    }

    /// The locked file (to record the holder in it).
    pub fn file(&self) -> &File {
        &self.file
    }
}

fn open(path: &Path) -> Result<File, Failure> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        crate::output::create_dir(dir)?;
    }
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|e| Failure::io_at(path, "cannot open lock file", &e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_holder_at_a_time_and_released_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/x.lock");
        let held = FileLock::try_acquire(&path).unwrap().expect("free at first");
        assert!(FileLock::try_acquire(&path).unwrap().is_none(), "held");
        let waiter = std::thread::spawn({
            let path = path.clone();
            move || {
                let mut waited = false;
                let _lock = FileLock::acquire(&path, || waited = true).unwrap();
                waited
            }
        });
        std::thread::sleep(std::time::Duration::from_millis(100));
        drop(held);
        assert!(waiter.join().unwrap(), "the second acquire had to wait");
        assert!(FileLock::try_acquire(&path).unwrap().is_some(), "free again after both dropped");
    }
}
