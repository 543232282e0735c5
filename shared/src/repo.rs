//! A repository in a local folder: layout, key unlocking, chunk and point storage.
//!
//! ```text
//! config                       RepoConfig (JSON), written last at init
//! keys/<slot>.json             KeySlot: the master key wrapped by a password or key file
//! chunks/<xx>/<id>             chunk blobs, xx = first two hex digits of the id
//! points/<vm>/<time>_<id>.json recovery points, written last and atomically
//! locks/lock                   flock target (see `lock`)
//! tmp/                         files being written; renamed into place when complete
//! ```

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use crate::chunk::{self, ChunkId, HEADER_LEN, MAX_CHUNK_SIZE};
use crate::compress::Compression;
use crate::config::{Encryption, REPO_FORMAT, REPO_VERSION, RepoConfig, parse_versioned};
use crate::crypto::{self, MasterKey, RepoKeys};
use crate::direct_io::ChunkWriter;
use crate::error::{RepoError, Result};
use crate::keys::{KEY_FORMAT, KEY_VERSION, KeySlot, MIN_KEY_FILE_LEN, Secret};
use crate::lock::{LockMode, RepoLock};
use crate::point::RecoveryPoint;
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
    root: PathBuf,
    config: RepoConfig,
    keys: RepoKeys,
    slot_id: Option<String>,
    tmp_counter: AtomicU64,
    chunk_writer: ChunkWriter,
}

/// Current time in the RFC 3339 form used throughout the repository.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

fn read(path: &Path) -> Result<Vec<u8>> {
    fs::read(path).map_err(RepoError::io("read", path))
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

/// Stores a chunk blob that arrived whole (a copy from a replica, or a replicated chunk) in the
/// repository at `root`: temp file, then rename into place. Not durable until [`syncfs`].
pub(crate) fn put_blob_file(root: &Path, counter: &AtomicU64, id: &ChunkId, blob: &[u8]) -> Result<()> {
    let n = counter.fetch_add(1, Ordering::Relaxed);
    let tmp = root.join("tmp").join(format!("{}.{}.{n}", id.to_hex(), std::process::id()));
    fs::write(&tmp, blob).map_err(RepoError::io("write", &tmp))?;
    let path = chunk_path(root, id);
    fs::rename(&tmp, &path).map_err(RepoError::io("rename into place", &path))
}

/// Where chunk `id` is stored in the repository at `root`.
pub(crate) fn chunk_path(root: &Path, id: &ChunkId) -> PathBuf {
    let hex = id.to_hex();
    root.join("chunks").join(&hex[..2]).join(hex)
}

/// Publishes a point file (`bytes`, already encoded) of `point` into the repository at `root`:
/// atomically and durably. Returns its path.
pub(crate) fn publish_point_file(root: &Path, point: &RecoveryPoint, bytes: &[u8]) -> Result<PathBuf> {
    let dir = root.join("points").join(vm_folder_name(&point.vm));
    fs::create_dir_all(&dir).map_err(RepoError::io("create folder", &dir))?;
    let stamp: String = point.time.chars().filter(|c| c.is_ascii_alphanumeric()).collect();
    let path = dir.join(format!("{stamp}_{}.json", point.id));
    write_atomic(&root.join("tmp"), &path, bytes)?;
    sync_dir(&root.join("points"))?;
    Ok(path)
}

/// Writes `bytes` to `path` atomically and durably: temp file, fsync, rename, fsync of the folder.
pub(crate) fn write_atomic(tmp_dir: &Path, path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = tmp_dir.join(format!("{}.{}", path.file_name().and_then(|n| n.to_str()).unwrap_or("file"), std::process::id()));
    let mut f = fs::File::create(&tmp).map_err(RepoError::io("create", &tmp))?;
    f.write_all(bytes).and_then(|_| f.sync_all()).map_err(RepoError::io("write", &tmp))?;
    fs::rename(&tmp, path).map_err(RepoError::io("rename into place", path))?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    fs::File::open(dir).and_then(|d| d.sync_all()).map_err(RepoError::io("fsync folder", dir))
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
    _vm: RepoLock,
    _repo: RepoLock,
}

impl Repository {
    /// Whether `path` holds a repository (has a config file).
    pub fn exists(path: &Path) -> bool {
        path.join("config").is_file()
    }

    /// Creates a repository at `path` (a missing or empty folder).
    pub fn init(path: &Path, opts: InitOptions) -> Result<Self> {
        // Two processes may create the same repository at once (two agents, first task each):
        // an flock on the folder itself makes one wait, and it then finds the other's repository
        // instead of mixing two sets of keys into one folder.
        fs::create_dir_all(path).map_err(RepoError::io("create folder", path))?;
        let folder = fs::File::open(path).map_err(RepoError::io("open folder", path))?;
        folder.lock().map_err(RepoError::io("lock folder", path))?;
        if Self::exists(path) {
            return Err(RepoError::Invalid(format!("{} already holds a repository", path.display())));
        }
        if let Ok(mut entries) = fs::read_dir(path)
            && entries.next().is_some()
        {
            return Err(RepoError::Invalid(format!("{} is not empty and holds no repository; choose an empty folder", path.display())));
        }
        chunk::validate_chunk_size(opts.chunk_size as u64).map_err(RepoError::Invalid)?;
        create_layout(path)?;
        let mut id = [0u8; 16];
        crypto::random_bytes(&mut id);
        let id = hex::encode(id);
        let master = MasterKey::generate();
        let encrypted = opts.secret.is_some();
        let mut slot_id = None;
        if let Some(secret) = &opts.secret {
            let slot = KeySlot::create(&id, secret, &master).map_err(RepoError::Invalid)?;
            write_slot(path, &slot)?;
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
        write_atomic(&path.join("tmp"), &path.join("config"), &bytes)?;
        Ok(Repository {
            root: path.to_path_buf(),
            keys: RepoKeys::derive(&master, encrypted),
            config,
            slot_id,
            tmp_counter: AtomicU64::new(0),
            chunk_writer: ChunkWriter::default(),
        })
    }

    /// Opens and unlocks the repository at `path`. Writes nothing.
    pub fn open(path: &Path, secret: Option<&Secret>) -> Result<Self> {
        let config_path = path.join("config");
        if !config_path.is_file() {
            return Err(RepoError::NotARepository(path.to_path_buf()));
        }
        let config: RepoConfig = parse_versioned("repository config", &read(&config_path)?, REPO_FORMAT, REPO_VERSION)?;
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
                let secret = secret.ok_or_else(|| RepoError::KeyRequired(path.to_path_buf()))?;
                let (key, slot) = unlock(path, &config.id, secret)?;
                (key, Some(slot))
            }
        };
        let keys = RepoKeys::derive(&master, config.encryption == Encryption::Aes256Gcm);
        Ok(Repository {
            root: path.to_path_buf(),
            config,
            keys,
            slot_id,
            tmp_counter: AtomicU64::new(0),
            chunk_writer: ChunkWriter::default(),
        })
    }

    /// The repository's folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The parsed config.
    pub fn config(&self) -> &RepoConfig {
        &self.config
    }

    /// The working keys.
    pub fn keys(&self) -> &RepoKeys {
        &self.keys
    }

    /// Takes the repository lock. An exclusive holder also clears files left in `tmp/` by a
    /// writer that died.
    pub fn lock(&self, mode: LockMode, wait: Duration, purpose: &str) -> Result<RepoLock> {
        let lock = RepoLock::acquire(&self.root, &self.root.join("locks/lock"), mode, wait, purpose)?;
        if mode == LockMode::Exclusive {
            let tmp = self.root.join("tmp");
            for entry in fs::read_dir(&tmp).map_err(RepoError::io("list", &tmp))? {
                let entry = entry.map_err(RepoError::io("list", &tmp))?;
                fs::remove_file(entry.path()).map_err(RepoError::io("remove stale temp file", entry.path()))?;
            }
        }
        Ok(lock)
    }

    /// Takes the locks of an export of `vm`: the repository lock shared (other VMs' exports,
    /// verify and restore go on; a key change waits) and the VM's own lock exclusively (a second
    /// export of the same VM waits). If nobody holds the repository at all, files left in `tmp/`
    /// by writers that died are cleared first.
    pub fn lock_for_export(&self, vm: &str, wait: Duration, purpose: &str) -> Result<ExportLocks> {
        let started = std::time::Instant::now();
        if let Ok(idle) = self.lock(LockMode::Exclusive, Duration::ZERO, purpose) {
            drop(idle);
        }
        let repo = RepoLock::acquire(&self.root, &self.root.join("locks/lock"), LockMode::Shared, wait, purpose)?;
        let vm_lock = self.root.join("locks").join(format!("vm-{}", vm_folder_name(vm)));
        let left = wait.saturating_sub(started.elapsed());
        let vm = RepoLock::acquire(&self.root, &vm_lock, LockMode::Exclusive, left, purpose)?;
        Ok(ExportLocks { _vm: vm, _repo: repo })
    }

    /// Where chunk `id` is stored.
    pub fn chunk_path(&self, id: &ChunkId) -> PathBuf {
        chunk_path(&self.root, id)
    }

    /// Whether a chunk blob is present (and long enough to be one).
    pub fn has_chunk(&self, id: &ChunkId) -> bool {
        fs::metadata(self.chunk_path(id)).is_ok_and(|m| m.len() >= HEADER_LEN as u64)
    }

    /// Encodes and stores a chunk (temp file, then rename). Call [`Repository::sync`] before
    /// publishing a point that refers to it. Returns the stored size.
    pub fn store_chunk(&self, compression: Compression, id: &ChunkId, plaintext: &[u8]) -> Result<u64> {
        let blob = chunk::encode(&self.keys, compression, id, plaintext);
        let n = self.tmp_counter.fetch_add(1, Ordering::Relaxed);
        let tmp = self.root.join("tmp").join(format!("{}.{}.{n}", id.to_hex(), std::process::id()));
        self.chunk_writer.write_new(&tmp, &blob).map_err(RepoError::io("write", &tmp))?;
        let path = self.chunk_path(id);
        fs::rename(&tmp, &path).map_err(RepoError::io("rename into place", &path))?;
        Ok(blob.len() as u64)
    }

    /// The stored blob of chunk `id`, as it is on disk (for replication).
    pub fn load_blob(&self, id: &ChunkId) -> Result<Vec<u8>> {
        let path = self.chunk_path(id);
        match fs::read(&path) {
            Ok(b) => Ok(b),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(RepoError::MissingChunk(id.to_hex())),
            Err(e) => Err(RepoError::io("read", path)(e)),
        }
    }

    /// Replaces chunk `id` by `blob` (a copy from a replica), after checking that it decodes to
    /// `len` bytes with this repository's key and hashes to `id`. Call [`Repository::sync`]
    /// afterwards.
    pub fn put_blob(&self, id: &ChunkId, blob: Vec<u8>, len: usize) -> Result<()> {
        chunk::decode(&self.keys, id, blob.clone(), len.min(MAX_CHUNK_SIZE as usize))
            .map_err(|reason| RepoError::CorruptChunk { id: id.to_hex(), reason: format!("the copy is corrupt too: {reason}") })?;
        put_blob_file(&self.root, &self.tmp_counter, id, &blob)
    }

    /// The files that identify the repository (`config` and the key slots), for a replica.
    pub fn repo_files(&self) -> Result<RepoFiles> {
        let config = read(&self.root.join("config"))?;
        let mut key_slots = Vec::new();
        for path in read_dir_sorted(&self.root.join("keys"))? {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
            if path.is_file() && name.ends_with(".json") {
                key_slots.push((name, read(&path)?));
            }
        }
        Ok(RepoFiles { config, key_slots })
    }

    /// Reads and decodes chunk `id`, which must decode to exactly `len` bytes.
    pub fn load_chunk(&self, id: &ChunkId, len: usize) -> Result<Vec<u8>> {
        let path = self.chunk_path(id);
        let blob = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(RepoError::MissingChunk(id.to_hex())),
            Err(e) => return Err(RepoError::io("read", path)(e)),
        };
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

    /// Flushes everything written so far to stable storage (one `syncfs` for the file system).
    pub fn sync(&self) -> Result<()> {
        syncfs(&self.root)
    }

    /// Publishes a point atomically; it becomes visible complete or not at all.
    pub fn write_point(&self, point: &RecoveryPoint) -> Result<PathBuf> {
        point.validate().map_err(RepoError::Invalid)?;
        publish_point_file(&self.root, point, &point.encode(&self.keys))
    }

    /// Reads every point file of one VM folder (or all, for `None`), each parsed on its own:
    /// a corrupt file is an `Err` naming it, the others still load.
    pub fn scan_points(&self, vm: Option<&str>) -> Result<Vec<Result<RecoveryPoint>>> {
        let top = self.root.join("points");
        let dirs = match vm {
            Some(vm) => vec![top.join(vm_folder_name(vm))],
            None => read_dir_sorted(&top)?,
        };
        let mut out = Vec::new();
        for vm_dir in dirs.into_iter().filter(|d| d.is_dir()) {
            for file in read_dir_sorted(&vm_dir)? {
                if file.extension().is_some_and(|e| e == "json") {
                    let what = format!("point file {}", file.display());
                    out.push(read(&file).and_then(|bytes| RecoveryPoint::decode(&self.keys, &what, &bytes)));
                }
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
        let (master, _) = unlock(&self.root, &self.config.id, master_from)?;
        let slot = KeySlot::create(&self.config.id, new_secret, &master).map_err(RepoError::Invalid)?;
        write_slot(&self.root, &slot)?;
        let old_path = self.root.join("keys").join(format!("{old}.json"));
        fs::remove_file(&old_path).map_err(RepoError::io("remove old key slot", &old_path))?;
        sync_dir(&self.root.join("keys"))?;
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

fn write_slot(root: &Path, slot: &KeySlot) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(slot).expect("key slot serializes");
    write_atomic(&root.join("tmp"), &root.join("keys").join(format!("{}.json", slot.id)), &bytes)
}

fn read_dir_sorted(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(RepoError::io("list", dir))?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()
        .map_err(RepoError::io("list", dir))?;
    out.sort();
    Ok(out)
}

/// Tries every key slot (`keys/*.json`) with `secret`; returns the master key and the slot that
/// opened. A damaged slot does not stop the others from being tried; it is named only when no
/// slot opens.
fn unlock(root: &Path, repo_id: &str, secret: &Secret) -> Result<(MasterKey, String)> {
    if let Secret::KeyFile(bytes) = secret
        && bytes.len() < MIN_KEY_FILE_LEN
    {
        return Err(RepoError::Invalid(format!("the key file holds {} bytes; at least {MIN_KEY_FILE_LEN} are needed", bytes.len())));
    }
    let mut damaged = None;
    for path in read_dir_sorted(&root.join("keys"))? {
        if !path.is_file() || path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let what = format!("key slot {}", path.display());
        let opened = read(&path).and_then(|bytes| parse_versioned::<KeySlot>(&what, &bytes, KEY_FORMAT, KEY_VERSION)).and_then(|slot| {
            match slot.open(repo_id, secret) {
                Ok(key) => Ok(key.map(|k| (k, slot.id))),
                Err(reason) => Err(RepoError::Corrupt { what: what.clone(), reason }),
            }
        });
        match opened {
            Ok(Some(found)) => return Ok(found),
            Ok(None) => {}
            Err(e) => damaged = damaged.or(Some(e)),
        }
    }
    Err(damaged.unwrap_or_else(|| RepoError::WrongKey(root.to_path_buf())))
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
        assert_eq!(fs::read_dir(path.join("keys")).unwrap().count(), 1, "one key slot");
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
        let blob_before = fs::read(repo.chunk_path(&id)).unwrap();
        repo.change_secret(&old, &Secret::Password(b"new".to_vec())).unwrap();
        assert!(matches!(Repository::open(dir.path(), Some(&old)), Err(RepoError::WrongKey(_))));
        let reopened = Repository::open(dir.path(), Some(&Secret::Password(b"new".to_vec()))).unwrap();
        assert_eq!(reopened.load_chunk(&id, 1).unwrap(), b"x");
        assert_eq!(fs::read(repo.chunk_path(&id)).unwrap(), blob_before);
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
