//! The agent's error type.

use std::path::PathBuf;

use hyperexport_shared::RepoError;

/// What can go wrong while exporting, verifying or restoring.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The repository layer failed.
    #[error(transparent)]
    Repo(#[from] RepoError),
    /// A vSphere server failed or refused.
    #[error(transparent)]
    Vsphere(#[from] crate::vsphere::VsphereError),
    /// A source VM or disk could not be used.
    #[error("source {path}: {reason}")]
    Source {
        /// The file or folder.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// An external tool is needed but not installed.
    #[error("{tool} is needed to {purpose} but is not installed (Debian package {package})")]
    MissingTool {
        /// The command.
        tool: &'static str,
        /// The Debian package that provides it.
        package: &'static str,
        /// What it was needed for.
        purpose: String,
    },
    /// An external tool failed.
    #[error("{tool} failed ({command}): {stderr}")]
    ToolFailed {
        /// The command.
        tool: &'static str,
        /// The command line.
        command: String,
        /// What it printed on stderr.
        stderr: String,
    },
    /// A file operation outside the repository failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On which path.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// A chunk of a disk could not be read back.
    #[error("disk {disk} at offset {offset}: {source}")]
    DiskChunk {
        /// Disk name.
        disk: String,
        /// Byte offset of the chunk in the disk.
        offset: u64,
        /// What went wrong.
        source: RepoError,
    },
    /// The restored data does not match the point.
    #[error("restored disk {disk} has SHA-256 {actual}, the point records {expected}")]
    DigestMismatch {
        /// Disk name.
        disk: String,
        /// Recorded digest.
        expected: String,
        /// Computed digest.
        actual: String,
    },
    /// A request was invalid.
    #[error("{0}")]
    Invalid(String),
    /// The work was cancelled.
    #[error("cancelled")]
    Cancelled,
}

impl AgentError {
    /// Wraps an I/O error with the operation and path it happened on.
    pub fn io(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| AgentError::Io { op, path, source }
    }

    /// A source error for `path`.
    pub fn source(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        AgentError::Source { path: path.into(), reason: reason.into() }
    }
}

/// Result alias for the agent.
pub type Result<T, E = AgentError> = std::result::Result<T, E>;
