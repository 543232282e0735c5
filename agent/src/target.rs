//! Targets of an agent's tasks: `file:///path`, a repository on the agent's host, or an object
//! store URL; opened with the agent's secret and created on first use.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyperexport_shared::Repository;
use hyperexport_shared::chunk::DEFAULT_CHUNK_SIZE;
use hyperexport_shared::compress::{Compression, DEFAULT_ZSTD_LEVEL};
use hyperexport_shared::keys::Secret;
use hyperexport_shared::repo::InitOptions;
use hyperexport_shared::storage::{LocalStorage, Storage};

use crate::error::{AgentError, Result};
use crate::storage;

/// How an agent opens its targets.
#[derive(Clone)]
pub struct TargetAccess {
    /// The secret of the repositories it writes (password or key file).
    pub secret: Option<Secret>,
    /// Create unencrypted repositories when there is no secret.
    pub allow_unencrypted: bool,
}

/// The storage of a target: `file:///absolute/path` (a repository on the agent's host) or an
/// object store or SFTP URL (`s3://`, `azure://`, `gs://`, `sftp://`; credentials from the
/// agent's environment).
pub fn target_storage(target: &str) -> Result<Arc<dyn Storage>> {
    if storage::is_url(target) {
        return Ok(storage::open(target)?);
    }
    match target.strip_prefix("file://") {
        Some(path) if path.starts_with('/') && !path.split('/').any(|c| c == "..") => Ok(Arc::new(LocalStorage::new(Path::new(path)))),
        _ => Err(AgentError::Invalid(format!(
            "target {target:?} is neither a file:///absolute/path URL nor an s3://, azure://, gs:// or sftp:// one"
        ))),
    }
}

/// Opens the repository in `store`, creating it (zstd, default chunk size) if it holds nothing.
pub fn open_or_create(store: Arc<dyn Storage>, access: &TargetAccess) -> Result<Repository> {
    // Tasks of this agent create targets one at a time; another process creating the same one
    // is waited for below.
    static CREATING: Mutex<()> = Mutex::new(());
    let _one_at_a_time = CREATING.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let location = store.location().to_string();
    if Repository::exists_in(store.as_ref())? {
        return Ok(Repository::open_in(store, access.secret.as_ref())?);
    }
    if access.secret.is_none() && !access.allow_unencrypted {
        return Err(AgentError::Invalid(format!(
            "target {location} holds no repository and this agent has no secret to create an encrypted one: start it with --password-file, --key-file or HYPEREXPORT_PASSWORD (or --no-encryption)"
        )));
    }
    let opts =
        InitOptions { chunk_size: DEFAULT_CHUNK_SIZE, compression: Compression::Zstd(DEFAULT_ZSTD_LEVEL), secret: access.secret.clone() };
    match Repository::init_in(store.clone(), opts) {
        Ok(repo) => Ok(repo),
        Err(e) => {
            // Another agent may be creating it right now: its config is written last.
            let deadline = Instant::now() + Duration::from_secs(5);
            while !Repository::exists_in(store.as_ref())? && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            if Repository::exists_in(store.as_ref())? { Ok(Repository::open_in(store, access.secret.as_ref())?) } else { Err(e.into()) }
        }
    }
}
