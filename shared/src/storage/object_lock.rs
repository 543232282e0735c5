//! Repository locks on an object store, where there is no `flock`: lock objects.
//!
//! A holder writes `locks/<name>/<mode>-<host>-<pid>-<random>.json` (who, why, and until when),
//! then lists `locks/<name>/`. An exclusive taker backs off if any other live lock is there; a
//! shared taker if a live exclusive one is. Both write before they look, so of two takers that
//! conflict at least one sees the other (the stores are strongly consistent for a listing after
//! a write); both may back off, and retry after a random pause. No conditional write is needed.
//!
//! A lock is refreshed every [`REFRESH`] and lives [`TTL`] past its last refresh: a holder that
//! dies leaves a lock that others ignore once it expires, or at once if it names a process of
//! this host that no longer runs. A holder cut off from the store for longer than the TTL may
//! lose its lock without knowing: the limit every lease-based lock has (docs/adr/0007).

use std::sync::Arc;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::{Durable, Storage, StorageLock, key};
use crate::error::{RepoError, Result};
use crate::lock::LockMode;

/// How long a lock lives past its last refresh.
pub const TTL: Duration = Duration::from_secs(60);
/// How often a held lock is refreshed.
pub const REFRESH: Duration = Duration::from_secs(15);
const POLL: Duration = Duration::from_millis(200);

/// What a lock object says.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Note {
    exclusive: bool,
    purpose: String,
    host: String,
    pid: u32,
    /// Seconds since the Unix epoch after which the lock is void.
    expires: u64,
}

impl Note {
    fn live(&self, now: u64, host: &str) -> bool {
        // A holder on this host is also void once its process is gone.
        self.expires > now && (self.host != host || process_alive(self.pid))
    }

    fn describe(&self) -> String {
        format!("{} by pid {} on {}", self.purpose, self.pid, self.host)
    }
}

/// A held lock object; refreshed by a thread until dropped, then removed.
#[derive(Debug)]
pub struct ObjectLock {
    stop: Option<mpsc::Sender<()>>,
    refresher: Option<std::thread::JoinHandle<()>>,
}

impl Drop for ObjectLock {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.refresher.take() {
            let _ = thread.join();
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn process_alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else { return false };
    // SAFETY: signal 0 sends nothing; it only asks whether the process exists.
    unsafe { libc::kill(pid, 0) == 0 || *libc::__errno_location() == libc::EPERM }
}

/// This machine's host name (for telling dead local holders from remote ones).
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_else(|_| "unknown".into())
}

/// Takes lock `name` on `store` in `mode`, waiting up to `wait`.
pub fn acquire(store: Arc<dyn Storage>, name: &str, mode: LockMode, wait: Duration, purpose: &str) -> Result<StorageLock> {
    let dir = format!("locks/{name}");
    let host = host_name();
    let exclusive = mode == LockMode::Exclusive;
    let mut random = [0u8; 6];
    crate::crypto::random_bytes(&mut random);
    let safe_host: String = host.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect();
    let own = key(&dir, &format!("{}-{safe_host}-{}-{}.json", if exclusive { "x" } else { "s" }, std::process::id(), hex::encode(random)));
    let note = |expires| Note { exclusive, purpose: purpose.to_string(), host: host.clone(), pid: std::process::id(), expires };
    let encode = |n: &Note| serde_json::to_vec(n).expect("lock note serializes");
    let started = Instant::now();
    loop {
        store.write(&own, &encode(&note(unix_now() + TTL.as_secs())), Durable::Now)?;
        match conflict(store.as_ref(), &dir, &own, exclusive, &host)? {
            None => break,
            Some(holder) => {
                store.delete(&own)?;
                if started.elapsed() >= wait {
                    return Err(RepoError::Locked { path: store.location().into(), holder, waited_secs: started.elapsed().as_secs() });
                }
                let mut jitter = [0u8; 1];
                crate::crypto::random_bytes(&mut jitter);
                std::thread::sleep(POLL + Duration::from_millis(jitter[0] as u64));
            }
        }
    }
    let (stop, stopped) = mpsc::channel::<()>();
    let refresh_note = note(0);
    let refresher = std::thread::Builder::new()
        .name("lock-refresh".into())
        .spawn(move || {
            // The sender is dropped when the lock is: the wait then ends with `Disconnected`.
            while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(REFRESH) {
                let fresh = Note { expires: unix_now() + TTL.as_secs(), ..refresh_note.clone() };
                if let Err(e) = store.write(&own, &encode(&fresh), Durable::Now) {
                    tracing::warn!(lock = %own, error = %e, "could not refresh a repository lock");
                }
            }
            if let Err(e) = store.delete(&own) {
                tracing::warn!(lock = %own, error = %e, "could not remove a repository lock; it expires by itself");
            }
        })
        .map_err(|e| RepoError::Invalid(format!("cannot start the lock refresher: {e}")))?;
    Ok(StorageLock::Object(ObjectLock { stop: Some(stop), refresher: Some(refresher) }))
}

/// Removes the lock objects under `locks/` whose holders are gone (expired, or a process of this
/// host that no longer runs); returns how many. Other files there (a folder's `flock` files) are
/// left alone.
pub fn remove_void(store: &dyn Storage, dry_run: bool) -> Result<u64> {
    let (now, host) = (unix_now(), host_name());
    let mut removed = 0;
    for (key, _) in store.list("locks")? {
        if key.matches('/').count() != 2 || !key.ends_with(".json") {
            continue;
        }
        let Some(bytes) = store.read(&key)? else { continue };
        if serde_json::from_slice::<Note>(&bytes).is_ok_and(|note| !note.live(now, &host)) {
            if !dry_run {
                store.delete(&key)?;
            }
            removed += 1;
        }
    }
    Ok(removed)
}

/// The first live lock under `dir` other than `own` that conflicts with taking it (any, for an
/// exclusive taker; an exclusive one, for a shared taker). Expired locks are removed.
fn conflict(store: &dyn Storage, dir: &str, own: &str, exclusive: bool, host: &str) -> Result<Option<String>> {
    let now = unix_now();
    for (other, _) in store.list(dir)? {
        if other == own {
            continue;
        }
        let Some(bytes) = store.read(&other)? else { continue };
        let Ok(note) = serde_json::from_slice::<Note>(&bytes) else {
            // Unreadable: treat as held (a lock we cannot read must not be ignored).
            return Ok(Some(format!("an unreadable lock object {other}")));
        };
        if !note.live(now, host) {
            let _ = store.delete(&other);
            continue;
        }
        if exclusive || note.exclusive {
            return Ok(Some(note.describe()));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::LocalStorage;

    #[test]
    fn exclusive_excludes_shared_shares_and_dead_holders_do_not_count() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Storage> = Arc::new(LocalStorage::new(dir.path()));
        let a = acquire(store.clone(), "repository", LockMode::Shared, Duration::ZERO, "verify").unwrap();
        let b = acquire(store.clone(), "repository", LockMode::Shared, Duration::ZERO, "restore").unwrap();
        let e = acquire(store.clone(), "repository", LockMode::Exclusive, Duration::from_millis(300), "prune").unwrap_err();
        assert!(e.to_string().contains("by pid"), "{e}");
        drop((a, b));
        assert!(store.list("locks/repository").unwrap().is_empty(), "released locks are removed");
        let x = acquire(store.clone(), "repository", LockMode::Exclusive, Duration::ZERO, "prune").unwrap();
        let e = acquire(store.clone(), "repository", LockMode::Shared, Duration::ZERO, "verify").unwrap_err();
        assert!(e.to_string().contains("prune by pid"), "{e}");
        drop(x);
        // A lock left by a process of this host that is gone, and one that expired, are ignored.
        let dead = Note { exclusive: true, purpose: "export".into(), host: host_name(), pid: u32::MAX / 2, expires: unix_now() + 600 };
        store.write("locks/repository/x-dead.json", &serde_json::to_vec(&dead).unwrap(), Durable::Now).unwrap();
        let old = Note { host: "elsewhere".into(), pid: 1, expires: unix_now() - 1, ..dead };
        store.write("locks/repository/x-old.json", &serde_json::to_vec(&old).unwrap(), Durable::Now).unwrap();
        let held = acquire(store.clone(), "repository", LockMode::Exclusive, Duration::ZERO, "prune").unwrap();
        assert_eq!(store.list("locks/repository").unwrap().len(), 1, "stale locks were removed");
        drop(held);
        store.write("locks/vm-a/x-dead.json", &serde_json::to_vec(&old).unwrap(), Durable::Now).unwrap();
        let live = acquire(store.clone(), "vm-b", LockMode::Exclusive, Duration::ZERO, "export").unwrap();
        assert_eq!(remove_void(store.as_ref(), false).unwrap(), 1, "only the dead holder's lock goes");
        assert_eq!(store.list("locks").unwrap().len(), 1);
        drop(live);
    }
}
