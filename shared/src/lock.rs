//! Repository locks: advisory `flock`s on `locks/lock` and on one `locks/vm-<name>` per VM.
//!
//! Exports take the repository lock shared and their VM's lock exclusively; readers take the
//! repository lock shared; a key change takes it exclusively. The kernel drops it when the holder dies, so a
//! `kill -9` never leaves a stale lock behind. An exclusive holder writes who it is into the file
//! (for the message another process gets) and empties it on release.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::error::{RepoError, Result};

/// How a lock is held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockMode {
    /// One writer, no readers.
    Exclusive,
    /// Any number of readers, no writer.
    Shared,
}

/// A held repository lock; released on drop.
#[derive(Debug)]
pub struct RepoLock {
    file: File,
    mode: LockMode,
}

impl Drop for RepoLock {
    fn drop(&mut self) {
        if self.mode == LockMode::Exclusive {
            // Best effort: a holder killed before this leaves its note, which only ever shows up
            // in a message, and the next exclusive holder overwrites it.
            let _ = self.file.set_len(0);
        }
    }
}

const POLL: Duration = Duration::from_millis(100);

impl RepoLock {
    /// Takes the lock at `path`, waiting up to `wait` for another holder to let go.
    pub fn acquire(repo: &Path, path: &Path, mode: LockMode, wait: Duration, purpose: &str) -> Result<Self> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(RepoError::io("open lock file", path))?;
        let start = Instant::now();
        loop {
            let attempt = match mode {
                LockMode::Exclusive => file.try_lock(),
                LockMode::Shared => file.try_lock_shared(),
            };
            match attempt {
                Ok(()) => break,
                Err(TryLockError::WouldBlock) if start.elapsed() < wait => std::thread::sleep(POLL),
                Err(TryLockError::WouldBlock) => {
                    let mut holder = String::new();
                    let _ = file.read_to_string(&mut holder);
                    let holder = match holder.trim() {
                        "" => "a reader or an export (verify, restore, export)".to_string(),
                        text => text.to_string(),
                    };
                    return Err(RepoError::Locked { path: repo.to_path_buf(), holder, waited_secs: start.elapsed().as_secs() });
                }
                Err(TryLockError::Error(e)) => return Err(RepoError::io("lock", path)(e)),
            }
        }
        if mode == LockMode::Exclusive {
            let note = format!(
                "{purpose} by pid {} since {}",
                std::process::id(),
                humantime::format_rfc3339_seconds(std::time::SystemTime::now())
            );
            file.set_len(0)
                .and_then(|_| file.rewind())
                .and_then(|_| file.write_all(note.as_bytes()))
                .map_err(RepoError::io("write", path))?;
        }
        Ok(RepoLock { file, mode })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exclusive_excludes_and_releases() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lock");
        File::create(&path).unwrap();
        let held = RepoLock::acquire(dir.path(), &path, LockMode::Exclusive, Duration::ZERO, "export").unwrap();
        let err = RepoLock::acquire(dir.path(), &path, LockMode::Shared, Duration::from_millis(150), "verify").unwrap_err();
        assert!(err.to_string().contains("export by pid"), "{err}");
        drop(held);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "", "the note is cleared on release");
        let a = RepoLock::acquire(dir.path(), &path, LockMode::Shared, Duration::ZERO, "verify").unwrap();
        let _b = RepoLock::acquire(dir.path(), &path, LockMode::Shared, Duration::ZERO, "restore").unwrap();
        let e = RepoLock::acquire(dir.path(), &path, LockMode::Exclusive, Duration::ZERO, "export").unwrap_err();
        assert!(e.to_string().contains("a reader"), "{e}");
        drop(a);
    }
}
