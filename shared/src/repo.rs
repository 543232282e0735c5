//! A repository: layout, key unlocking, chunk and point storage, on any [`Storage`].
//!
//! ```text
//! config                       RepoConfig (JSON), created last at init (create-if-absent)
//! keys/<slot>.json             KeySlot: the master key wrapped by a password or key file
//! chunks/<xx>/<id>             chunk blobs, xx = first two hex digits of the id
//! points/<vm>/<time>_<id>.json recovery points, written last, created once
//! locks/                       locks (flock files in a folder, lock objects in an object store)
//! tmp/                         (folders only) files being written; renamed into place
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::chunk::{self, ChunkId, HEADER_LEN, MAX_CHUNK_SIZE};
use crate::compress::Compression;
use crate::config::{Encryption, REPO_FORMAT, REPO_VERSION, RepoConfig, parse_versioned};
use crate::crypto::{self, MasterKey, RepoKeys};
use crate::error::{RepoError, Result};
use crate::keys::{KEY_FORMAT, KEY_VERSION, KeySlot, MIN_KEY_FILE_LEN, Secret};
use crate::lock::LockMode;
use crate::point::RecoveryPoint;
use crate::storage::local::REPO_LOCK;
pub use crate::storage::local::chunk_key;
use crate::storage::{Durable, LocalStorage, Storage, StorageLock, key};
use crate::wire::RepoFiles;

/// Options for a new repository.
pub struct InitOptions {
    /// Default chunk size.
    pub chunk_size: u32,
    /// Default compression.
    pub compression: Compression,
    /// The secret for the first key slot; `None` creates an unencrypted repository.
    pub secret: Option<Secret>,
}

/// An open, unlocked repository.
pub struct Repository {
    storage: Arc<dyn Storage>,
    config: RepoConfig,
    keys: RepoKeys,
    slot_id: Option<String>,
}

/// Current time in the RFC 3339 form used throughout the repository.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// The key of a point file of `point`.
pub fn point_key(point: &RecoveryPoint) -> String {
    let stamp: String = point.time.chars().filter(|c| c.is_ascii_alphanumeric()).collect();
    format!("points/{}/{stamp}_{}.json", vm_folder_name(&point.vm), point.id)
}

/// Longest folder name [`vm_folder_name`] returns (file systems allow 255 bytes).
const MAX_FOLDER_NAME: usize = 200;

/// Encodes a VM name as a folder name: `[A-Za-z0-9._-]` kept, anything else `%XX`. A name whose
/// encoding is too long is cut and given a `~` and 16 hex digits of its hash, to stay unique.
pub fn vm_folder_name(vm: &str) -> String {
    let mut out = String::new();
    for (i, b) in vm.bytes().enumerate() {
        let keep = b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || (b == b'.' && i > 0);
        if keep { out.push(b as char) } else { out.push_str(&format!("%{b:02X}")) }
    }
    if out.len() > MAX_FOLDER_NAME {
        out.truncate(MAX_FOLDER_NAME - 17);
        out.push('~');
        out.push_str(&blake3::hash(vm.as_bytes()).to_hex()[..16]);
    }
    if out.is_empty() { "%".into() } else { out }
}

/// The locks an export holds (see [`Repository::lock_for_export`]); released on drop.
#[derive(Debug)]
pub struct ExportLocks {
    _vm: StorageLock,
    _repo: StorageLock,
}

impl Repository {
    /// Whether the folder `path` holds a repository (has a config file).
    pub fn exists(path: &Path) -> bool {
        path.join("config").is_file()
    }

    /// Whether `storage` holds a repository (has a config object).
    pub fn exists_in(storage: &dyn Storage) -> Result<bool> {
        if storage.size("config")?.is_some() {
            return Ok(true);
        }
        storage.check()?;
        Ok(false)
    }

    /// Creates a repository in the folder `path` (missing or empty).
    pub fn init(path: &Path, opts: InitOptions) -> Result<Self> {
        Self::init_in(Arc::new(LocalStorage::new(path)), opts)
    }

    /// Creates a repository in `storage`, which must hold no repository and no chunks or points.
    /// Of several processes creating one at once, one succeeds and the others are told that it
    /// exists: its config is created last, only if absent.
    pub fn init_in(storage: Arc<dyn Storage>, opts: InitOptions) -> Result<Self> {
        let at = storage.location().to_string();
        if Self::exists_in(storage.as_ref())? {
            return Err(RepoError::Invalid(format!("{at} already holds a repository")));
        }
        // Key slots and locks of another process creating a repository here at the same time
        // do not count: that race is settled by the config below.
        let others = storage.list("")?.into_iter().filter(|(k, _)| !k.starts_with("keys/") && !k.starts_with("locks/")).count();
        if others > 0 {
            return Err(RepoError::Invalid(format!("{at} is not empty and holds no repository; choose an empty folder or prefix")));
        }
        chunk::validate_chunk_size(opts.chunk_size as u64).map_err(RepoError::Invalid)?;
        let mut id = [0u8; 16];
        crypto::random_bytes(&mut id);
        let id = hex::encode(id);
        let master = MasterKey::generate();
        let encrypted = opts.secret.is_some();
        // The folders are made while the password's key is derived: a local repository's 261
        // folders take one core tens of milliseconds, the key derivation's threads the others.
        let (prepared, slot) = std::thread::scope(|s| {
            let prepare = s.spawn(|| storage.prepare());
            let slot = opts.secret.as_ref().map(|secret| KeySlot::create(&id, secret, &master)).transpose();
            (prepare.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)), slot)
        });
        prepared?;
        let mut slot_id = None;
        if let Some(slot) = slot.map_err(RepoError::Invalid)? {
            write_slot(storage.as_ref(), &slot)?;
            slot_id = Some(slot.id);
        }
        let config = RepoConfig {
            format: REPO_FORMAT.into(),
            version: REPO_VERSION,
            id,
            created: now_rfc3339(),
            chunk_size: opts.chunk_size,
            compression: opts.compression.to_string(),
            encryption: if encrypted { Encryption::Aes256Gcm } else { Encryption::None },
            master_key: (!encrypted).then(|| hex::encode(master.0)),
        };
        let bytes = serde_json::to_vec_pretty(&config).expect("config serializes");
        if !storage.create("config", &bytes)? {
            if let Some(slot) = &slot_id {
                storage.delete(&slot_key(slot))?;
            }
            return Err(RepoError::Invalid(format!("{at} already holds a repository")));
        }
        Ok(Repository { storage, keys: RepoKeys::derive(&master, encrypted), config, slot_id })
    }

    /// Opens and unlocks the repository in the folder `path`. Writes nothing.
    pub fn open(path: &Path, secret: Option<&Secret>) -> Result<Self> {
        Self::open_in(Arc::new(LocalStorage::new(path)), secret)
    }

    /// Opens and unlocks the repository in `storage`. Writes nothing.
    pub fn open_in(storage: Arc<dyn Storage>, secret: Option<&Secret>) -> Result<Self> {
        let at = PathBuf::from(storage.location());
        let Some(bytes) = storage.read("config")? else {
            storage.check()?;
            return Err(RepoError::NotARepository(at));
        };
        let config: RepoConfig = parse_versioned("repository config", &bytes, REPO_FORMAT, REPO_VERSION)?;
        chunk::validate_chunk_size(config.chunk_size as u64).map_err(|e| corrupt("repository config", &e))?;
        config.compression.parse::<Compression>().map_err(|e| corrupt("repository config", &e))?;
        let (master, slot_id) = match config.encryption {
            Encryption::None => {
                let hexkey = config
                    .master_key
                    .as_deref()
                    .ok_or_else(|| corrupt("repository config", "unencrypted repository without master_key"))?;
                let mut key = [0u8; 32];
                hex::decode_to_slice(hexkey, &mut key).map_err(|e| corrupt("repository config", &format!("master_key: {e}")))?;
                (MasterKey(key), None)
            }
            Encryption::Aes256Gcm => {
                let secret = secret.ok_or(RepoError::KeyRequired(at))?;
                let (key, slot) = unlock(storage.as_ref(), &config.id, secret)?;
                (key, Some(slot))
            }
        };
        let keys = RepoKeys::derive(&master, config.encryption == Encryption::Aes256Gcm);
        Ok(Repository { storage, config, keys, slot_id })
    }

    /// Where the repository is: a folder or a URL (no credentials).
    pub fn location(&self) -> &str {
        self.storage.location()
    }

    /// The repository's folder, for one on the local file system.
    pub fn local_root(&self) -> Option<&Path> {
        self.storage.local_root()
    }

    /// The storage it lives in.
    pub fn storage(&self) -> &Arc<dyn Storage> {
        &self.storage
    }

    /// The parsed config.
    pub fn config(&self) -> &RepoConfig {
        &self.config
    }

    /// The working keys.
    pub fn keys(&self) -> &RepoKeys {
        &self.keys
    }

    /// Takes the repository lock. An exclusive holder of a folder's lock also clears files left
    /// in `tmp/` by a writer that died.
    pub fn lock(&self, mode: LockMode, wait: Duration, purpose: &str) -> Result<StorageLock> {
        self.storage.lock(REPO_LOCK, mode, wait, purpose)
    }

    /// Takes the locks of an export of `vm`: the repository lock shared (other VMs' exports,
    /// verify and restore go on; a key change waits) and the VM's own lock exclusively (a second
    /// export of the same VM waits). If nobody holds the repository at all, files left in `tmp/`
    /// by writers that died are cleared first.
    pub fn lock_for_export(&self, vm: &str, wait: Duration, purpose: &str) -> Result<ExportLocks> {
        let started = std::time::Instant::now();
        if self.storage.local_root().is_some()
            && let Ok(idle) = self.lock(LockMode::Exclusive, Duration::ZERO, purpose)
        {
            drop(idle);
        }
        let repo = self.lock(LockMode::Shared, wait, purpose)?;
        let left = wait.saturating_sub(started.elapsed());
        let vm = self.storage.lock(&format!("vm-{}", vm_folder_name(vm)), LockMode::Exclusive, left, purpose)?;
        Ok(ExportLocks { _vm: vm, _repo: repo })
    }

    /// Whether a chunk blob is present (and long enough to be one).
    pub fn has_chunk(&self, id: &ChunkId) -> bool {
        self.storage.size(&chunk_key(id)).is_ok_and(|s| s.is_some_and(|len| len >= HEADER_LEN as u64))
    }

    /// Encodes and stores a chunk. Call [`Repository::sync`] before publishing a point that
    /// refers to it. Returns the stored size.
    pub fn store_chunk(&self, compression: Compression, id: &ChunkId, plaintext: &[u8]) -> Result<u64> {
        chunk::encode_with(&self.keys, compression, id, plaintext, |blob| {
            self.storage.write(&chunk_key(id), blob, Durable::AtSync).map(|()| blob.len() as u64)
        })
    }

    /// The stored blob of chunk `id`, as it is stored (for replication).
    pub fn load_blob(&self, id: &ChunkId) -> Result<Vec<u8>> {
        self.storage.read(&chunk_key(id))?.ok_or_else(|| RepoError::MissingChunk(id.to_hex()))
    }

    /// Replaces chunk `id` by `blob` (a copy from a replica), after checking that it decodes to
    /// `len` bytes with this repository's key and hashes to `id`. Call [`Repository::sync`]
    /// afterwards.
    pub fn put_blob(&self, id: &ChunkId, blob: Vec<u8>, len: usize) -> Result<()> {
        chunk::decode(&self.keys, id, blob.clone(), len.min(MAX_CHUNK_SIZE as usize))
            .map_err(|reason| RepoError::CorruptChunk { id: id.to_hex(), reason: format!("the copy is corrupt too: {reason}") })?;
        self.storage.write(&chunk_key(id), &blob, Durable::AtSync)
    }

    /// The files that identify the repository (`config` and the key slots), for a replica.
    pub fn repo_files(&self) -> Result<RepoFiles> {
        let config = self.storage.read("config")?.ok_or_else(|| RepoError::NotARepository(self.location().into()))?;
        let mut key_slots = Vec::new();
        for (slot, _) in self.storage.list("keys")? {
            let name = slot.rsplit('/').next().unwrap_or_default().to_string();
            if name.ends_with(".json")
                && let Some(bytes) = self.storage.read(&slot)?
            {
                key_slots.push((name, bytes));
            }
        }
        Ok(RepoFiles { config, key_slots })
    }

    /// Reads and decodes chunk `id`, which must decode to exactly `len` bytes.
    pub fn load_chunk(&self, id: &ChunkId, len: usize) -> Result<Vec<u8>> {
        let blob = self.load_blob(id)?;
        let plain = chunk::decode(&self.keys, id, blob, len.min(MAX_CHUNK_SIZE as usize))
            .map_err(|reason| RepoError::CorruptChunk { id: id.to_hex(), reason })?;
        if plain.len() != len {
            return Err(RepoError::CorruptChunk {
                id: id.to_hex(),
                reason: format!("holds {} bytes, the point expects {len}", plain.len()),
            });
        }
        Ok(plain)
    }

    /// Flushes every chunk written so far to stable storage.
    pub fn sync(&self) -> Result<()> {
        self.storage.sync()
    }

    /// Publishes a point atomically; it becomes visible complete or not at all, and an existing
    /// point file is never replaced. Returns its key.
    pub fn write_point(&self, point: &RecoveryPoint) -> Result<String> {
        point.validate().map_err(RepoError::Invalid)?;
        let key = point_key(point);
        let bytes = point.encode(&self.keys);
        if !self.storage.create(&key, &bytes)? && self.storage.read(&key)?.as_deref() != Some(&bytes[..]) {
            return Err(RepoError::Invalid(format!("point file {key} exists already with other content")));
        }
        Ok(key)
    }

    /// Reads every point file of one VM folder (or all, for `None`), each parsed on its own:
    /// a corrupt file is an `Err` naming it, the others still load.
    pub fn scan_points(&self, vm: Option<&str>) -> Result<Vec<Result<RecoveryPoint>>> {
        let dir = match vm {
            Some(vm) => key("points", &vm_folder_name(vm)),
            None => "points".to_string(),
        };
        let mut out = Vec::new();
        for (file, _) in self.storage.list(&dir)? {
            if file.ends_with(".json") && file.matches('/').count() == 2 {
                let what = format!("point file {}", key(self.location(), &file));
                let bytes = self
                    .storage
                    .read(&file)?
                    .ok_or_else(|| RepoError::Corrupt { what: what.clone(), reason: "vanished while read".into() });
                out.push(bytes.and_then(|bytes| RecoveryPoint::decode(&self.keys, &what, &bytes)));
            }
        }
        Ok(out)
    }
    /// Reads every point, oldest first. A corrupt point file is an error naming it.
    pub fn list_points(&self) -> Result<Vec<RecoveryPoint>> {
        let mut points = self.scan_points(None)?.into_iter().collect::<Result<Vec<_>>>()?;
        sort_points(&mut points);
        Ok(points)
    }

    /// Finds a point by full id, unique id prefix, or `latest` (the newest of all).
    pub fn resolve_point(&self, spec: &str) -> Result<RecoveryPoint> {
        let mut points = self.list_points()?;
        if spec == "latest" {
            return points.pop().ok_or_else(|| RepoError::PointNotFound("the repository holds no points".into()));
        }
        if spec.is_empty() || !spec.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(RepoError::PointNotFound(format!("point {spec:?} is neither `latest` nor a hex id or prefix")));
        }
        let spec = spec.to_ascii_lowercase();
        let mut matches: Vec<_> = points.into_iter().filter(|p| p.id.starts_with(&spec)).collect();
        match matches.len() {
            0 => Err(RepoError::PointNotFound(format!("no point id starts with {spec:?}"))),
            1 => Ok(matches.remove(0)),
            n => Err(RepoError::PointNotFound(format!("{n} points start with {spec:?}; give more digits"))),
        }
    }

    /// The newest point of `vm`, if any. Reads only that VM's folder, so a damaged point of
    /// another VM does not stop this one's exports.
    pub fn latest_point_of(&self, vm: &str) -> Result<Option<RecoveryPoint>> {
        let mut points = self.scan_points(Some(vm))?.into_iter().collect::<Result<Vec<_>>>()?;
        sort_points(&mut points);
        Ok(points.into_iter().rev().find(|p| p.vm == vm))
    }

    /// Replaces the key slot that opened this repository by one for `new_secret`. Chunk data is
    /// untouched. The new slot is durable before the old one is removed.
    pub fn change_secret(&mut self, master_from: &Secret, new_secret: &Secret) -> Result<()> {
        let old = self
            .slot_id
            .clone()
            .ok_or_else(|| RepoError::Invalid("the repository is not encrypted: it has no password to change".into()))?;
        let _lock = self.lock(LockMode::Exclusive, Duration::from_secs(60), "key change")?;
        let (master, _) = unlock(self.storage.as_ref(), &self.config.id, master_from)?;
        let slot = KeySlot::create(&self.config.id, new_secret, &master).map_err(RepoError::Invalid)?;
        write_slot(self.storage.as_ref(), &slot)?;
        self.storage.delete(&slot_key(&old))?;
        self.slot_id = Some(slot.id);
        Ok(())
    }
}

/// Oldest first; ties broken by id so the order is total.
fn sort_points(points: &mut [RecoveryPoint]) {
    points.sort_by(|a, b| a.time.cmp(&b.time).then_with(|| a.id.cmp(&b.id)));
}

fn corrupt(what: &str, reason: &str) -> RepoError {
    RepoError::Corrupt { what: what.into(), reason: reason.into() }
}

fn slot_key(slot_id: &str) -> String {
    format!("keys/{slot_id}.json")
}

fn write_slot(storage: &dyn Storage, slot: &KeySlot) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(slot).expect("key slot serializes");
    storage.write(&slot_key(&slot.id), &bytes, Durable::Now)
}

/// Tries every key slot (`keys/*.json`) with `secret`; returns the master key and the slot that
/// opened. A damaged slot does not stop the others from being tried; it is named only when no
/// slot opens.
fn unlock(storage: &dyn Storage, repo_id: &str, secret: &Secret) -> Result<(MasterKey, String)> {
    if let Secret::KeyFile(bytes) = secret
        && bytes.len() < MIN_KEY_FILE_LEN
    {
        return Err(RepoError::Invalid(format!("the key file holds {} bytes; at least {MIN_KEY_FILE_LEN} are needed", bytes.len())));
    }
    let mut damaged = None;
    for (slot_key, _) in storage.list("keys")? {
        if !slot_key.ends_with(".json") {
            continue;
        }
        let what = format!("key slot {}", key(storage.location(), &slot_key));
        let bytes = storage.read(&slot_key)?.ok_or_else(|| RepoError::Corrupt { what: what.clone(), reason: "vanished while read".into() });
        let opened = bytes.and_then(|bytes| parse_versioned::<KeySlot>(&what, &bytes, KEY_FORMAT, KEY_VERSION)).and_then(|slot| match slot
            .open(repo_id, secret)
        {
            Ok(key) => Ok(key.map(|k| (k, slot.id))),
            Err(reason) => Err(RepoError::Corrupt { what: what.clone(), reason }),
        });
        match opened {
            Ok(Some(found)) => return Ok(found),
            Ok(None) => {}
            Err(e) => damaged = damaged.or(Some(e)),
        }
    }
    Err(damaged.unwrap_or_else(|| RepoError::WrongKey(storage.location().into())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn init(dir: &Path, secret: Option<Secret>) -> Repository {
        Repository::init(dir, InitOptions { chunk_size: 1 << 16, compression: Compression::Zstd(3), secret }).unwrap()
    }

    #[test]
    fn concurrent_inits_make_one_repository() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("repo");
        let key = || Secret::KeyFile(vec![7; 32]);
        let outcomes: Vec<std::result::Result<String, String>> = std::thread::scope(|s| {
            let starts: Vec<_> = (0..6)
                .map(|_| {
                    s.spawn(|| {
                        let opts = InitOptions { chunk_size: 1 << 20, compression: Compression::None, secret: Some(key()) };
                        Repository::init(&path, opts).map(|r| r.config().id.clone()).map_err(|e| e.to_string())
                    })
                })
                .collect();
            starts.into_iter().map(|t| t.join().unwrap()).collect()
        });
        let made: Vec<&String> = outcomes.iter().filter_map(|o| o.as_ref().ok()).collect();
        assert_eq!(made.len(), 1, "{outcomes:?}");
        assert!(outcomes.iter().filter_map(|o| o.as_ref().err()).all(|e| e.contains("already holds a repository")), "{outcomes:?}");
        let repo = Repository::open(&path, Some(&key())).unwrap();
        assert_eq!(&repo.config().id, made[0]);
        assert_eq!(std::fs::read_dir(path.join("keys")).unwrap().count(), 1, "one key slot");
    }

    #[test]
    fn chunks_round_trip_and_wrong_password_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let repo = init(dir.path(), Some(Secret::Password(b"pw".to_vec())));
        let data = b"abc".repeat(1000);
        let id = ChunkId(repo.keys().chunk_id(&data));
        repo.store_chunk(Compression::Zstd(3), &id, &data).unwrap();
        assert!(repo.has_chunk(&id));
        assert_eq!(repo.load_chunk(&id, data.len()).unwrap(), data);
        assert!(matches!(repo.load_chunk(&id, 5), Err(RepoError::CorruptChunk { .. })));
        assert!(matches!(repo.load_chunk(&ChunkId([0; 32]), 5), Err(RepoError::MissingChunk(_))));

        let again = Repository::open(dir.path(), Some(&Secret::Password(b"pw".to_vec()))).unwrap();
        assert_eq!(again.load_chunk(&id, data.len()).unwrap(), data);
        assert!(matches!(Repository::open(dir.path(), Some(&Secret::Password(b"no".to_vec()))), Err(RepoError::WrongKey(_))));
        assert!(matches!(Repository::open(dir.path(), None), Err(RepoError::KeyRequired(_))));
        assert!(Repository::init(dir.path(), InitOptions { chunk_size: 1 << 16, compression: Compression::None, secret: None }).is_err());
    }

    #[test]
    fn password_change_keeps_data() {
        let dir = tempfile::tempdir().unwrap();
        let old = Secret::Password(b"old".to_vec());
        let mut repo = init(dir.path(), Some(Secret::Password(b"old".to_vec())));
        let id = ChunkId(repo.keys().chunk_id(b"x"));
        repo.store_chunk(Compression::None, &id, b"x").unwrap();
        let blob_before = std::fs::read(dir.path().join(chunk_key(&id))).unwrap();
        repo.change_secret(&old, &Secret::Password(b"new".to_vec())).unwrap();
        assert!(matches!(Repository::open(dir.path(), Some(&old)), Err(RepoError::WrongKey(_))));
        let reopened = Repository::open(dir.path(), Some(&Secret::Password(b"new".to_vec()))).unwrap();
        assert_eq!(reopened.load_chunk(&id, 1).unwrap(), b"x");
        assert_eq!(std::fs::read(dir.path().join(chunk_key(&id))).unwrap(), blob_before);
    }

    #[test]
    fn points_resolve_by_prefix_and_latest() {
        let dir = tempfile::tempdir().unwrap();
        let repo = init(dir.path(), None);
        let mut p = crate::point::tests::sample();
        p.disks[0].chunks = vec![None, None];
        repo.write_point(&p).unwrap();
        let mut q = p.clone();
        q.id = "0123ffff".repeat(4);
        q.time = "2026-11-27T10:00:00.000Z".into();
        repo.write_point(&q).unwrap();
        assert_eq!(repo.resolve_point("latest").unwrap().id, q.id);
        assert_eq!(repo.resolve_point("0123f").unwrap().id, q.id);
        assert!(repo.resolve_point("0123").is_err());
        assert!(repo.resolve_point("zz").is_err());
        assert_eq!(repo.latest_point_of("web 01").unwrap().unwrap().id, q.id);
        assert!(dir.path().join("points/web%2001").is_dir());
        assert_eq!(vm_folder_name("../x"), "%2E.%2Fx");
        let long = vm_folder_name(&"é".repeat(200));
        assert!(long.len() <= 200 && long.contains('~'), "{long}");
        assert_ne!(long, vm_folder_name(&"é".repeat(201)));
    }
}
