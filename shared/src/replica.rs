//! The receiving side of replication: a replica of a repository, written without its key.
//!
//! A replica is an ordinary repository folder (`docs/FORMAT.md`) that holds the same `config` and
//! key slots as its source, so that it opens, verifies and restores with the same password. The
//! receiver never needs the password: chunk blobs arrive encrypted and are stored as they are,
//! and a point is published only once every chunk it names is on stable storage here, so a
//! visible point is always complete. Nothing the peer sends becomes a path: the folder is named
//! by the repository id (32 hex digits), chunks by their ids, points as [`Repository`] names
//! them.
//!
//! [`Repository`]: crate::repo::Repository

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;

use crate::chunk::{BLOB_VERSION, ChunkId, HEADER_LEN, MAGIC};
use crate::config::{REPO_FORMAT, REPO_VERSION, RepoConfig, parse_versioned};
use crate::error::{RepoError, Result};
use crate::point::RecoveryPoint;
use crate::repo::point_key;
use crate::storage::local::{chunk_key, create_layout, put_blob_file, sync_dir, syncfs, write_atomic};
use crate::wire::RepoFiles;

/// A replica being written.
pub struct ReplicaStore {
    root: PathBuf,
    tmp_counter: AtomicU64,
}

fn invalid(reason: impl Into<String>) -> RepoError {
    RepoError::Invalid(reason.into())
}

/// Checks a key slot file name from a peer: `<hex>.json`.
fn valid_slot_name(name: &str) -> bool {
    name.strip_suffix(".json").is_some_and(|stem| !stem.is_empty() && stem.len() <= 64 && stem.bytes().all(|b| b.is_ascii_hexdigit()))
}

impl ReplicaStore {
    /// Opens the replica of the repository that `files` describe under `parent` (in
    /// `parent/<repository id>`), creating it from those files if it does not exist. An existing
    /// replica must have the very same config; key slots it lacks are added (a password added at
    /// the source works here too).
    pub fn open_or_create(parent: &Path, files: &RepoFiles) -> Result<Self> {
        let config: RepoConfig = parse_versioned("the sender's repository config", &files.config, REPO_FORMAT, REPO_VERSION)?;
        if config.id.len() != 32 || !config.id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return Err(invalid(format!("the sender's repository id {:?} is not 32 lower-case hex digits", config.id)));
        }
        if let Some(bad) = files.key_slots.iter().find(|(name, _)| !valid_slot_name(name)) {
            return Err(invalid(format!("the sender's key slot name {:?} is not <hex>.json", bad.0)));
        }
        let root = parent.join(&config.id);
        fs::create_dir_all(&root).map_err(RepoError::io("create folder", &root))?;
        // Several streams of one sender open the replica at once: one creates it, the others
        // wait and find it.
        let folder = fs::File::open(&root).map_err(RepoError::io("open folder", &root))?;
        folder.lock().map_err(RepoError::io("lock folder", &root))?;
        let config_path = root.join("config");
        let existing = match fs::read(&config_path) {
            Ok(bytes) => Some(bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(RepoError::io("read", &config_path)(e)),
        };
        if existing.as_ref().is_some_and(|bytes| *bytes != files.config) {
            return Err(invalid(format!(
                "{} holds a replica of repository {} whose config differs from the sender's: not overwriting it",
                root.display(),
                config.id
            )));
        }
        let tmp = root.join("tmp");
        if existing.is_none() {
            create_layout(&root)?;
        }
        for (name, bytes) in &files.key_slots {
            let path = root.join("keys").join(name);
            if !path.exists() {
                write_atomic(&tmp.join(name), &path, bytes)?;
            }
        }
        if existing.is_none() {
            // The config goes last: a folder without it is not a repository yet.
            write_atomic(&tmp.join("config"), &config_path, &files.config)?;
            tracing::info!(repository = %config.id, path = %root.display(), "replica created");
        }
        Ok(ReplicaStore { root, tmp_counter: AtomicU64::new(0) })
    }

    /// An existing replica (or repository) folder, to read blobs from.
    pub fn at(root: PathBuf) -> Self {
        ReplicaStore { root, tmp_counter: AtomicU64::new(0) }
    }

    /// Holds the replica's lock shared while a transfer runs, so that a prune (exclusive) never
    /// removes a chunk the transfer relies on; waits up to `wait` for a prune to finish.
    pub fn lock_shared(&self, wait: std::time::Duration) -> Result<crate::lock::RepoLock> {
        crate::lock::RepoLock::acquire(&self.root, &self.root.join("locks/lock"), crate::lock::LockMode::Shared, wait, "replication")
    }

    /// The replica's folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Whether chunk `id` is stored here.
    pub fn has_chunk(&self, id: &ChunkId) -> bool {
        fs::metadata(self.root.join(chunk_key(id))).is_ok_and(|m| m.len() >= HEADER_LEN as u64)
    }

    /// The stored blob of chunk `id`, if the replica has it.
    pub fn load_blob(&self, id: &ChunkId) -> Result<Option<Vec<u8>>> {
        let path = self.root.join(chunk_key(id));
        match fs::read(&path) {
            Ok(blob) => Ok(Some(blob)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(RepoError::io("read", path)(e)),
        }
    }

    /// Stores a chunk blob as it came (temp file, then rename). Only its header can be checked
    /// without the key; [`ReplicaStore::sync`] makes it durable.
    pub fn put_chunk(&self, id: &ChunkId, blob: &[u8]) -> Result<()> {
        if blob.len() < HEADER_LEN || blob[..4] != MAGIC || blob[4] != BLOB_VERSION {
            return Err(invalid(format!("chunk {id} from the sender is not a version {BLOB_VERSION} chunk blob")));
        }
        put_blob_file(&self.root, &self.tmp_counter, id, blob)
    }

    /// Makes every chunk stored so far durable (one `syncfs` for the replica's file system).
    pub fn sync(&self) -> Result<()> {
        syncfs(&self.root)
    }

    /// Publishes a point file received whole: only when every chunk it names is here, after
    /// making them durable. Returns the point, or [`RepoError::MissingChunk`] naming the first
    /// absent chunk (and how many are absent).
    pub fn publish_point(&self, bytes: &[u8]) -> Result<RecoveryPoint> {
        let point = RecoveryPoint::decode_unauthenticated("the sender's point file", bytes)?;
        let missing: Vec<ChunkId> = point.chunk_ids().into_iter().filter(|id| !self.has_chunk(id)).collect();
        if let Some(first) = missing.first() {
            return Err(RepoError::MissingChunk(format!("{first} (and {} more) of point {}", missing.len() - 1, point.id)));
        }
        self.sync()?;
        let path = self.root.join(point_key(&point));
        let dir = path.parent().unwrap_or(&self.root);
        fs::create_dir_all(dir).map_err(RepoError::io("create folder", dir))?;
        let tmp = self.root.join("tmp").join(format!("{}.{}", point.id, std::process::id()));
        write_atomic(&tmp, &path, bytes)?;
        sync_dir(&self.root.join("points"))?;
        sync_dir(&self.root)?;
        Ok(point)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compress::Compression;
    use crate::keys::Secret;
    use crate::repo::{InitOptions, Repository};

    fn source(dir: &Path) -> Repository {
        let opts = InitOptions { chunk_size: 1 << 16, compression: Compression::Zstd(3), secret: Some(Secret::KeyFile(vec![9; 32])) };
        Repository::init(&dir.join("src"), opts).unwrap()
    }

    #[test]
    fn a_replica_opens_with_the_source_key_and_refuses_another_repository() {
        let dir = tempfile::tempdir().unwrap();
        let src = source(dir.path());
        let files = src.repo_files().unwrap();
        let replica = ReplicaStore::open_or_create(&dir.path().join("replicas"), &files).unwrap();
        assert_eq!(replica.root(), dir.path().join("replicas").join(&src.config().id));
        Repository::open(replica.root(), Some(&Secret::KeyFile(vec![9; 32]))).expect("the replica opens with the source's key");
        // Opening again is fine; another repository under the same id is not.
        ReplicaStore::open_or_create(&dir.path().join("replicas"), &files).unwrap();
        let mut other = files.clone();
        other.config = String::from_utf8(other.config).unwrap().replace("\"chunk_size\": 65536", "\"chunk_size\": 131072").into_bytes();
        let e = ReplicaStore::open_or_create(&dir.path().join("replicas"), &other).err().unwrap();
        assert!(e.to_string().contains("differs"), "{e}");
        let mut bad = files;
        bad.key_slots.push(("../../escape.json".into(), b"{}".to_vec()));
        let e = ReplicaStore::open_or_create(&dir.path().join("replicas"), &bad).err().unwrap();
        assert!(e.to_string().contains("key slot name"), "{e}");
    }

    #[test]
    fn a_point_is_published_only_when_all_its_chunks_are_there() {
        let dir = tempfile::tempdir().unwrap();
        let src = source(dir.path());
        let data = vec![7u8; 1 << 16];
        let id = ChunkId(src.keys().chunk_id(&data));
        src.store_chunk(Compression::Zstd(3), &id, &data).unwrap();
        let mut point = crate::point::tests::sample();
        point.disks[0].size = data.len() as u64;
        point.disks[0].chunk_size = data.len() as u32;
        point.disks[0].chunks = vec![Some(id)];
        let replica = ReplicaStore::open_or_create(&dir.path().join("r"), &src.repo_files().unwrap()).unwrap();
        let bytes = point.encode(src.keys());
        let e = replica.publish_point(&bytes).unwrap_err();
        assert!(matches!(e, RepoError::MissingChunk(_)), "{e}");
        assert!(replica.put_chunk(&id, b"not a blob").is_err());
        replica.put_chunk(&id, &src.load_blob(&id).unwrap()).unwrap();
        assert_eq!(replica.publish_point(&bytes).unwrap().id, point.id);
        let opened = Repository::open(replica.root(), Some(&Secret::KeyFile(vec![9; 32]))).unwrap();
        let listed = opened.list_points().unwrap();
        assert_eq!(listed, vec![point]);
        assert_eq!(opened.load_chunk(&id, data.len()).unwrap(), data);
    }
}
