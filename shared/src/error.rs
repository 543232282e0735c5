//! The error type of the repository layer.

use std::path::PathBuf;

/// Everything that can go wrong while reading or writing a repository.
#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    /// An I/O operation on a repository file failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done ("read", "write", "rename", ...).
        op: &'static str,
        /// The file or folder it was done to.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// A request to an object store failed (after its retries).
    #[error("{op} {location}: {reason}")]
    Storage {
        /// What was being done ("read", "write", "list", ...).
        op: &'static str,
        /// The object (URL, no credentials).
        location: String,
        /// What the store or the connection said.
        reason: String,
    },
    /// The folder holds no repository.
    #[error("no repository at {0} (no config file); export to it once to create one")]
    NotARepository(PathBuf),
    /// A file was written by a format version this build does not read.
    #[error("{what} has format version {found}, this build reads version {supported}; upgrade hyperexport")]
    UnsupportedVersion {
        /// Which file.
        what: String,
        /// The version in the file.
        found: u32,
        /// The version this build reads.
        supported: u32,
    },
    /// A file could not be parsed.
    #[error("{what} is corrupt: {reason}")]
    Corrupt {
        /// Which file or object.
        what: String,
        /// What is wrong with it.
        reason: String,
    },
    /// No key slot could be opened with the given password or key file.
    #[error("wrong password or key file for repository {0} (no key slot opens with it)")]
    WrongKey(PathBuf),
    /// The repository is encrypted but no password or key file was given.
    #[error("repository {0} is encrypted: give --password-file, --key-file or HYPEREXPORT_PASSWORD")]
    KeyRequired(PathBuf),
    /// A chunk the point refers to is not in the repository.
    #[error("chunk {0} is missing")]
    MissingChunk(String),
    /// A chunk failed its authentication tag, decompression or id check.
    #[error("chunk {id} is corrupt: {reason}")]
    CorruptChunk {
        /// The chunk id (hex).
        id: String,
        /// What failed.
        reason: String,
    },
    /// The repository lock is held by another process.
    #[error("repository {path} is locked by another process ({holder}); waited {waited_secs} s")]
    Locked {
        /// The repository.
        path: PathBuf,
        /// What the lock file says about its holder.
        holder: String,
        /// How long we waited.
        waited_secs: u64,
    },
    /// A point specification matched nothing or more than one point.
    #[error("{0}")]
    PointNotFound(String),
    /// An argument was invalid.
    #[error("{0}")]
    Invalid(String),
}

impl RepoError {
    /// Wraps an I/O error with the operation and path it happened on.
    pub fn io(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| RepoError::Io { op, path, source }
    }
}

/// Result alias for the repository layer.
pub type Result<T, E = RepoError> = std::result::Result<T, E>;
