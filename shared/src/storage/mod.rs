//! Where a repository keeps its files: a local folder ([`LocalStorage`]) or an object store
//! (S3, Azure Blob, GCS: the agent crate's `storage` module). A repository names its files by
//! `/`-separated keys (`config`, `keys/<slot>.json`, `chunks/ab/<id>`, `points/<vm>/<file>`);
//! a backend maps them to files or objects under its root or prefix.
//!
//! What every backend guarantees (and the repository relies on):
//! - a written object is seen whole or not at all (files: temp file and rename; object stores:
//!   a PUT is atomic);
//! - [`Storage::create`] writes only if the key is absent, atomically against other writers
//!   (files: `link(2)`; object stores: a conditional write, `If-None-Match: *`);
//! - a listing made after a write completed shows it (S3, Azure Blob and GCS are strongly
//!   consistent for this).

pub(crate) mod local;
pub mod object_lock;

use std::path::Path;
use std::time::Duration;

pub use local::{LocalStorage, REPO_LOCK};

use crate::error::Result;
use crate::lock::{LockMode, RepoLock};

/// When a write must be on stable storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durable {
    /// Before the call returns (config, key slots, points).
    Now,
    /// By the next [`Storage::sync`] (chunks: one flush for many writes).
    AtSync,
}

/// A held repository lock: a file lock on a local folder, lock objects on an object store.
#[derive(Debug)]
pub enum StorageLock {
    /// An `flock` (see [`crate::lock`]).
    File(RepoLock),
    /// A lock object, refreshed while held (see [`object_lock`]).
    Object(object_lock::ObjectLock),
}

/// The files of one repository, wherever they are. Blocking calls: run them off async reactors.
pub trait Storage: Send + Sync {
    /// The location, for messages: a folder or a URL without credentials.
    fn location(&self) -> &str;

    /// The folder, for a repository on the local file system.
    fn local_root(&self) -> Option<&Path> {
        None
    }

    /// Prepares an empty location for a new repository (folders, lock files).
    fn prepare(&self) -> Result<()> {
        Ok(())
    }

    /// Checks that the location can be used at all (the bucket exists, the credentials are
    /// accepted), so that a missing repository is told apart from an unreachable one.
    fn check(&self) -> Result<()> {
        Ok(())
    }

    /// The content of `key`, or `None` if there is no such object.
    fn read(&self, key: &str) -> Result<Option<Vec<u8>>>;

    /// The size of `key`, or `None` if there is no such object.
    fn size(&self, key: &str) -> Result<Option<u64>>;

    /// Writes `key` whole, replacing any previous content.
    fn write(&self, key: &str, bytes: &[u8], durable: Durable) -> Result<()>;

    /// Writes `key` only if it does not exist yet; `Ok(false)` if it does. Durable on return.
    fn create(&self, key: &str, bytes: &[u8]) -> Result<bool>;

    /// Every key under the folder `dir` (`""`: all), with its size, sorted by key.
    fn list(&self, dir: &str) -> Result<Vec<(String, u64)>>;

    /// Removes `key`; a missing key is not an error.
    fn delete(&self, key: &str) -> Result<()>;

    /// Makes every [`Durable::AtSync`] write so far durable.
    fn sync(&self) -> Result<()>;

    /// Removes the temp files writers that died left (call with the repository lock held
    /// exclusively); returns how many there were. Backends without temp files have none.
    fn clear_temp(&self, _dry_run: bool) -> Result<u64> {
        Ok(0)
    }

    /// Takes the lock `name` (`"repository"`, `"vm-<name>"`), waiting up to `wait` for other
    /// holders. `purpose` is shown to whoever waits for it.
    fn lock(&self, name: &str, mode: LockMode, wait: Duration, purpose: &str) -> Result<StorageLock>;
}

/// Joins a folder and a name into a key.
pub fn key(dir: &str, name: &str) -> String {
    if dir.is_empty() { name.to_string() } else { format!("{dir}/{name}") }
}
