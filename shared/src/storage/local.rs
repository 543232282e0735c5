//! A repository in a local folder: keys are files under it, written to `tmp/` first and renamed
//! into place; chunks with `O_DIRECT` where the file system takes it, flushed together by one
//! `syncfs`; locks are `flock`s (see [`crate::lock`]).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::{Durable, Storage, StorageLock};
use crate::ChunkId;
use crate::direct_io::ChunkWriter;
use crate::error::{RepoError, Result};
use crate::lock::{LockMode, RepoLock};

/// A repository folder on the local file system.
#[derive(Debug)]
pub struct LocalStorage {
    root: PathBuf,
    location: String,
    tmp_counter: AtomicU64,
    /// Random, so that two `LocalStorage`s of one process never pick the same temp name.
    tmp_tag: u32,
    chunk_writer: ChunkWriter,
}

impl LocalStorage {
    /// The folder `root` (which need not exist yet).
    pub fn new(root: &Path) -> Self {
        LocalStorage {
            root: root.to_path_buf(),
            location: root.display().to_string(),
            tmp_counter: AtomicU64::new(0),
            tmp_tag: {
                let mut b = [0u8; 4];
                crate::crypto::random_bytes(&mut b);
                u32::from_le_bytes(b)
            },
            chunk_writer: ChunkWriter::default(),
        }
    }

    fn path(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }

    /// A fresh name in `tmp/` for a file that will become `key`.
    fn tmp_path(&self, key: &str) -> PathBuf {
        let n = self.tmp_counter.fetch_add(1, Ordering::Relaxed);
        let name = key.rsplit('/').next().unwrap_or("file");
        self.root.join("tmp").join(format!("{name}.{}.{:08x}.{n}", std::process::id(), self.tmp_tag))
    }
}

/// Creates the folder of `path` if missing, durably (its entry in the folder above is flushed).
fn create_parent(path: &Path) -> Result<()> {
    match path.parent() {
        Some(dir) if !dir.is_dir() => {
            fs::create_dir_all(dir).map_err(RepoError::io("create folder", dir))?;
            dir.parent().map_or(Ok(()), sync_dir)
        }
        _ => Ok(()),
    }
}

impl Storage for LocalStorage {
    fn location(&self) -> &str {
        &self.location
    }

    fn local_root(&self) -> Option<&Path> {
        Some(&self.root)
    }

    fn prepare(&self) -> Result<()> {
        create_layout(&self.root)
    }

    fn read(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let path = self.path(key);
        match fs::read(&path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(RepoError::io("read", path)(e)),
        }
    }

    fn size(&self, key: &str) -> Result<Option<u64>> {
        let path = self.path(key);
        match fs::metadata(&path) {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(RepoError::io("stat", path)(e)),
        }
    }

    fn write(&self, key: &str, bytes: &[u8], durable: Durable) -> Result<()> {
        let path = self.path(key);
        create_parent(&path)?;
        let tmp = self.tmp_path(key);
        create_parent(&tmp)?;
        match durable {
            Durable::Now => write_atomic(&tmp, &path, bytes),
            Durable::AtSync => {
                self.chunk_writer.write_new(&tmp, bytes).map_err(RepoError::io("write", &tmp))?;
                fs::rename(&tmp, &path).map_err(RepoError::io("rename into place", &path))
            }
        }
    }

    fn create(&self, key: &str, bytes: &[u8]) -> Result<bool> {
        let path = self.path(key);
        create_parent(&path)?;
        let tmp = self.tmp_path(key);
        create_parent(&tmp)?;
        let mut f = fs::File::create(&tmp).map_err(RepoError::io("create", &tmp))?;
        f.write_all(bytes).and_then(|_| f.sync_all()).map_err(RepoError::io("write", &tmp))?;
        // link(2) fails if the name exists: the one atomic create-if-absent a folder offers.
        let linked = fs::hard_link(&tmp, &path);
        let _ = fs::remove_file(&tmp);
        match linked {
            Ok(()) => sync_dir(path.parent().unwrap_or(&self.root)).map(|_| true),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(RepoError::io("create", &path)(e)),
        }
    }

    fn list(&self, dir: &str) -> Result<Vec<(String, u64)>> {
        let mut out = Vec::new();
        walk(&self.root, &self.path(dir), &mut out)?;
        out.sort();
        Ok(out)
    }

    fn delete(&self, key: &str) -> Result<()> {
        let path = self.path(key);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(RepoError::io("remove", path)(e)),
        }
    }

    fn sync(&self) -> Result<()> {
        syncfs(&self.root)
    }

    fn lock(&self, name: &str, mode: LockMode, wait: Duration, purpose: &str) -> Result<StorageLock> {
        let file = if name == REPO_LOCK { self.root.join("locks/lock") } else { self.root.join("locks").join(name) };
        let lock = RepoLock::acquire(&self.root, &file, mode, wait, purpose)?;
        if name == REPO_LOCK && mode == LockMode::Exclusive {
            // Nobody else writes: whatever is in tmp/ was left by a writer that died.
            let tmp = self.root.join("tmp");
            for entry in fs::read_dir(&tmp).map_err(RepoError::io("list", &tmp))? {
                let entry = entry.map_err(RepoError::io("list", &tmp))?;
                fs::remove_file(entry.path()).map_err(RepoError::io("remove stale temp file", entry.path()))?;
            }
        }
        Ok(StorageLock::File(lock))
    }
}

/// The name of the lock of the whole repository.
pub const REPO_LOCK: &str = "repository";

/// Adds the files under `dir` (keys relative to `root`, with sizes) to `out`; `tmp/` and the
/// lock files are not keys.
fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, u64)>) -> Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(RepoError::io("list", dir)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(RepoError::io("list", dir))?;
        let path = entry.path();
        let meta = entry.metadata().map_err(RepoError::io("stat", &path))?;
        let rel = path.strip_prefix(root).unwrap_or(&path);
        if rel == Path::new("tmp") || rel == Path::new("locks") {
            continue;
        }
        if meta.is_dir() {
            walk(root, &path, out)?;
        } else if let Some(key) = rel.to_str() {
            out.push((key.to_string(), meta.len()));
        }
    }
    Ok(())
}

/// Creates a repository's folders and lock file under `path` (everything but `config` and keys).
pub(crate) fn create_layout(path: &Path) -> Result<()> {
    for dir in ["keys", "chunks", "points", "locks", "tmp"] {
        let p = path.join(dir);
        fs::create_dir_all(&p).map_err(RepoError::io("create folder", &p))?;
    }
    for i in 0..=255u8 {
        let p = path.join("chunks").join(format!("{i:02x}"));
        fs::create_dir_all(&p).map_err(RepoError::io("create folder", &p))?;
    }
    let lock = path.join("locks/lock");
    fs::File::create(&lock).map_err(RepoError::io("create", &lock))?;
    Ok(())
}

/// Flushes everything written under `root` to stable storage (one `syncfs` for its file system).
pub(crate) fn syncfs(root: &Path) -> Result<()> {
    let dir = fs::File::open(root).map_err(RepoError::io("open", root))?;
    use std::os::fd::AsRawFd;
    // SAFETY: syncfs only reads the file descriptor, which `dir` keeps open for the call.
    if unsafe { libc::syncfs(dir.as_raw_fd()) } != 0 {
        return Err(RepoError::io("syncfs", root)(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Stores a chunk blob that arrived whole (a replicated chunk) in the repository folder at
/// `root`: temp file, then rename into place. Not durable until [`syncfs`].
pub(crate) fn put_blob_file(root: &Path, counter: &AtomicU64, id: &ChunkId, blob: &[u8]) -> Result<()> {
    let n = counter.fetch_add(1, Ordering::Relaxed);
    let tmp = root.join("tmp").join(format!("{}.{}.{n}", id.to_hex(), std::process::id()));
    fs::write(&tmp, blob).map_err(RepoError::io("write", &tmp))?;
    let path = root.join(chunk_key(id));
    fs::rename(&tmp, &path).map_err(RepoError::io("rename into place", &path))
}

/// The key of chunk `id`: `chunks/<first two hex digits>/<hex>`.
pub fn chunk_key(id: &ChunkId) -> String {
    let hex = id.to_hex();
    format!("chunks/{}/{hex}", &hex[..2])
}

/// Writes `bytes` to `path` atomically and durably through the temp file `tmp`: write, fsync,
/// rename, fsync of the folder.
pub(crate) fn write_atomic(tmp: &Path, path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = fs::File::create(tmp).map_err(RepoError::io("create", tmp))?;
    f.write_all(bytes).and_then(|_| f.sync_all()).map_err(RepoError::io("write", tmp))?;
    fs::rename(tmp, path).map_err(RepoError::io("rename into place", path))?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

/// Flushes a folder's entries (names created or renamed in it).
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    fs::File::open(dir).and_then(|d| d.sync_all()).map_err(RepoError::io("fsync folder", dir))
}
