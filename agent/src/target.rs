//! Targets of an agent's tasks: `file:///path`, a repository on the agent's host, opened with the
//! agent's secret and created on first use.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hyperexport_shared::Repository;
use hyperexport_shared::chunk::DEFAULT_CHUNK_SIZE;
use hyperexport_shared::compress::{Compression, DEFAULT_ZSTD_LEVEL};
use hyperexport_shared::keys::Secret;
use hyperexport_shared::repo::InitOptions;

use crate::error::{AgentError, Result};

/// How an agent opens its targets.
#[derive(Clone)]
pub struct TargetAccess {
    /// The secret of the repositories it writes (password or key file).
    pub secret: Option<Secret>,
    /// Create unencrypted repositories when there is no secret.
    pub allow_unencrypted: bool,
}

/// The path of a `file:///absolute/path` target.
pub fn target_path(target: &str) -> Result<PathBuf> {
    match target.strip_prefix("file://") {
        Some(path) if path.starts_with('/') && !path.split('/').any(|c| c == "..") => Ok(PathBuf::from(path)),
        _ => Err(AgentError::Invalid(format!("target {target:?} is not a file:///absolute/path URL"))),
    }
}

/// Opens the repository at `path`, creating it (zstd, default chunk size) if the folder is
/// missing or empty.
pub fn open_or_create(path: &Path, access: &TargetAccess) -> Result<Repository> {
    // Tasks of this agent create targets one at a time; another process creating the same one
    // is waited for below.
    static CREATING: Mutex<()> = Mutex::new(());
    let _one_at_a_time = CREATING.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if Repository::exists(path) {
        return Ok(Repository::open(path, access.secret.as_ref())?);
    }
    if access.secret.is_none() && !access.allow_unencrypted {
        return Err(AgentError::Invalid(format!(
            "target {} holds no repository and this agent has no secret to create an encrypted one: start it with --password-file, --key-file or HYPEREXPORT_PASSWORD (or --no-encryption)",
            path.display()
        )));
    }
    let opts =
        InitOptions { chunk_size: DEFAULT_CHUNK_SIZE, compression: Compression::Zstd(DEFAULT_ZSTD_LEVEL), secret: access.secret.clone() };
    match Repository::init(path, opts) {
        Ok(repo) => Ok(repo),
        Err(e) => {
            // Another agent may be creating it right now: its config file is written last.
            let deadline = Instant::now() + Duration::from_secs(5);
            while !Repository::exists(path) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            if Repository::exists(path) { Ok(Repository::open(path, access.secret.as_ref())?) } else { Err(e.into()) }
        }
    }
}
