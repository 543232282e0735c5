//! Key slots (`keys/<slot>.json`): the master key wrapped by a password (Argon2id) or a key file.
//!
//! Changing a password writes a new slot and removes the old one; chunk data is never
//! re-encrypted because it is encrypted with keys derived from the unchanged master key.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};

use crate::crypto::{self, KEY_LEN, MasterKey};

/// `format` value of a key slot file.
pub const KEY_FORMAT: &str = "hyperexport-key";
/// Key slot format version.
pub const KEY_VERSION: u32 = 1;
const CONTEXT_KEY_FILE: &str = "hyperexport 2026-11 key file wrapping key v1";
/// Smallest key file accepted, in bytes.
pub const MIN_KEY_FILE_LEN: usize = 32;
const MAX_KDF_MEMORY_KIB: u32 = 4 * 1024 * 1024;
const MAX_KDF_ITERATIONS: u32 = 64;

/// What unlocks a repository.
#[derive(Clone)]
pub enum Secret {
    /// A password (bytes as given, without a trailing newline).
    Password(Vec<u8>),
    /// The contents of a key file.
    KeyFile(Vec<u8>),
}

impl Secret {
    fn kind(&self) -> SlotKind {
        match self {
            Secret::Password(_) => SlotKind::Password,
            Secret::KeyFile(_) => SlotKind::KeyFile,
        }
    }
}

/// What kind of secret a slot is wrapped with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SlotKind {
    /// A password through Argon2id.
    Password,
    /// A key file through BLAKE3 key derivation.
    KeyFile,
}

/// Argon2id parameters of a password slot.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KdfParams {
    /// Always "argon2id".
    pub algorithm: String,
    /// Memory cost in KiB.
    pub memory_kib: u32,
    /// Number of passes.
    pub iterations: u32,
    /// Degree of parallelism.
    pub parallelism: u32,
    /// Random 16-byte salt, base64.
    pub salt: String,
}

impl KdfParams {
    /// Fresh parameters with a random salt: 64 MiB, 3 passes, 4 lanes (RFC 9106's second
    /// recommended setting); the lanes are computed on parallel threads, so deriving the key
    /// takes a fraction of one lane's time on a multi-core machine.
    pub fn generate() -> Self {
        let mut salt = [0u8; 16];
        crypto::random_bytes(&mut salt);
        KdfParams { algorithm: "argon2id".into(), memory_kib: 64 * 1024, iterations: 3, parallelism: 4, salt: B64.encode(salt) }
    }

    fn derive(&self, password: &[u8]) -> Result<[u8; KEY_LEN], String> {
        if self.algorithm != "argon2id" {
            return Err(format!("unknown KDF {:?}", self.algorithm));
        }
        if self.memory_kib > MAX_KDF_MEMORY_KIB || self.iterations > MAX_KDF_ITERATIONS {
            return Err("KDF parameters exceed the limits this build accepts".into());
        }
        let salt = B64.decode(&self.salt).map_err(|e| format!("salt is not base64: {e}"))?;
        let params = argon2::Params::new(self.memory_kib, self.iterations, self.parallelism, Some(KEY_LEN))
            .map_err(|e| format!("invalid Argon2 parameters: {e}"))?;
        let count = params.block_count();
        let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let mut memory = KdfMemory::new(count)
            .ok_or_else(|| format!("Argon2id needs {} KiB of memory, which could not be allocated", self.memory_kib))?;
        let mut key = [0u8; KEY_LEN];
        argon.hash_password_into_with_memory(password, &salt, &mut key, memory.blocks()).map_err(|e| format!("Argon2id failed: {e}"))?;
        Ok(key)
    }
}

/// Argon2id's memory, zeroed by `calloc` (fresh pages from the kernel), so that the lanes'
/// threads fault it in during the first pass, in parallel. The crate's own allocation is 64-byte
/// aligned, which the system allocator serves with an aligned malloc and a memset: one thread
/// clears all of it before the lanes start.
struct KdfMemory {
    base: std::ptr::NonNull<u8>,
    layout: std::alloc::Layout,
    count: usize,
}

impl KdfMemory {
    /// Room for `count` blocks; `None` if the allocator has none.
    fn new(count: usize) -> Option<Self> {
        // One block more than needed, so the 64-byte aligned blocks fit at any 8-byte start; an
        // alignment of 8 (not 64) is what lets the allocator use `calloc`.
        let layout = std::alloc::Layout::from_size_align(count.checked_add(1)?.checked_mul(argon2::Block::SIZE)?, 8).ok()?;
        // SAFETY: the layout's size is not zero (at least one block).
        let base = std::ptr::NonNull::new(unsafe { std::alloc::alloc_zeroed(layout) })?;
        Some(KdfMemory { base, layout, count })
    }

    /// The blocks, all zero to begin with.
    fn blocks(&mut self) -> &mut [argon2::Block] {
        let align = align_of::<argon2::Block>();
        let offset = (align - self.base.as_ptr().addr() % align) % align;
        // SAFETY: `offset` < 64 and the allocation holds `count` + 1 blocks, so `count` blocks
        // start at an aligned address inside it; the memory is zeroed, and every bit pattern
        // (zeros included) is a valid `Block` (128 `u64` words); `&mut self` makes the borrow
        // unique.
        unsafe { std::slice::from_raw_parts_mut(self.base.as_ptr().add(offset).cast(), self.count) }
    }
}

impl Drop for KdfMemory {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout, freed once.
        unsafe { std::alloc::dealloc(self.base.as_ptr(), self.layout) }
    }
}

/// One key slot file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeySlot {
    /// Always [`KEY_FORMAT`].
    pub format: String,
    /// Always [`KEY_VERSION`].
    pub version: u32,
    /// Random slot id (16 hex digits), also the file name.
    pub id: String,
    /// When the slot was written (RFC 3339).
    pub created: String,
    /// Password or key file.
    pub kind: SlotKind,
    /// KDF parameters (password slots only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kdf: Option<KdfParams>,
    /// nonce || AES-256-GCM(master key) || tag, base64; associated data is "repo id/slot id".
    pub wrapped: String,
}

impl KeySlot {
    /// Wraps `master` with `secret` in a new slot of repository `repo_id`.
    pub fn create(repo_id: &str, secret: &Secret, master: &MasterKey) -> Result<Self, String> {
        let mut id = [0u8; 8];
        crypto::random_bytes(&mut id);
        let id = hex::encode(id);
        let kdf = matches!(secret, Secret::Password(_)).then(KdfParams::generate);
        let key = wrapping_key(secret, kdf.as_ref())?;
        let wrapped = crypto::wrap(&key, aad(repo_id, &id).as_bytes(), &master.0);
        Ok(KeySlot {
            format: KEY_FORMAT.into(),
            version: KEY_VERSION,
            id,
            created: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            kind: secret.kind(),
            kdf,
            wrapped: B64.encode(wrapped),
        })
    }

    /// Unwraps the master key; `Ok(None)` when the secret does not open this slot.
    pub fn open(&self, repo_id: &str, secret: &Secret) -> Result<Option<MasterKey>, String> {
        if self.kind != secret.kind() {
            return Ok(None);
        }
        let key = wrapping_key(secret, self.kdf.as_ref())?;
        let wrapped = B64.decode(&self.wrapped).map_err(|e| format!("wrapped key is not base64: {e}"))?;
        Ok(crypto::unwrap(&key, aad(repo_id, &self.id).as_bytes(), &wrapped)
            .and_then(|k| <[u8; KEY_LEN]>::try_from(k.as_slice()).ok())
            .map(MasterKey))
    }
}

fn aad(repo_id: &str, slot_id: &str) -> String {
    format!("{repo_id}/{slot_id}")
}

fn wrapping_key(secret: &Secret, kdf: Option<&KdfParams>) -> Result<[u8; KEY_LEN], String> {
    match (secret, kdf) {
        (Secret::Password(p), Some(kdf)) => kdf.derive(p),
        (Secret::Password(_), None) => Err("password slot has no KDF parameters".into()),
        (Secret::KeyFile(bytes), _) => {
            if bytes.len() < MIN_KEY_FILE_LEN {
                return Err(format!("key file holds {} bytes; at least {MIN_KEY_FILE_LEN} are needed", bytes.len()));
            }
            Ok(blake3::derive_key(CONTEXT_KEY_FILE, bytes))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kdf_memory_is_aligned_zeroed_blocks_or_none() {
        let mut memory = KdfMemory::new(3).unwrap();
        let blocks = memory.blocks();
        assert_eq!(blocks.len(), 3);
        assert_eq!(blocks.as_ptr() as usize % 64, 0);
        assert!(blocks.iter().all(|b| b.as_ref().iter().all(|&w| w == 0)));
        assert!(KdfMemory::new(usize::MAX / 2).is_none());
    }

    #[test]
    fn password_and_key_file_slots() {
        let master = MasterKey([4; 32]);
        let pw = Secret::Password(b"correct horse".to_vec());
        let slot = KeySlot::create("repo", &pw, &master).unwrap();
        assert_eq!(slot.open("repo", &pw).unwrap().unwrap().0, master.0);
        assert!(slot.open("repo", &Secret::Password(b"wrong".to_vec())).unwrap().is_none());
        assert!(slot.open("other-repo", &pw).unwrap().is_none());
        let kf = Secret::KeyFile(vec![1; 32]);
        assert!(slot.open("repo", &kf).unwrap().is_none());
        let kslot = KeySlot::create("repo", &kf, &master).unwrap();
        assert_eq!(kslot.open("repo", &kf).unwrap().unwrap().0, master.0);
        assert!(KeySlot::create("repo", &Secret::KeyFile(vec![1; 5]), &master).is_err());
    }

    #[test]
    fn a_one_lane_slot_written_by_the_earlier_build_still_opens() {
        // Written by the build before password slots got 4 lanes (argon2 0.5, one lane), for the
        // repository id below with the password "old slot password".
        let slot: KeySlot = serde_json::from_str(
            r#"{"format": "hyperexport-key", "version": 1, "id": "4e1a1ea908cff210", "created": "2026-11-27T18:01:14Z",
                "kind": "password",
                "kdf": {"algorithm": "argon2id", "memory_kib": 65536, "iterations": 3, "parallelism": 1, "salt": "mcFEU1rnp03XFWkU8MXToA=="},
                "wrapped": "8nc2M44ea57RYvouyLtDtsn2B0PuQeEHVYfbXHbPmBMU1IYvgnR5d0KFs3a5cDt53Dnjco0Gq1AxOwtz"}"#,
        )
        .unwrap();
        let repo = "060c0ece6a7c7de9b3c2cdf41e1e078f";
        assert!(slot.open(repo, &Secret::Password(b"old slot password".to_vec())).unwrap().is_some());
        assert!(slot.open(repo, &Secret::Password(b"old slot passwore".to_vec())).unwrap().is_none());
        assert_eq!(KdfParams::generate().parallelism, 4, "new slots use 4 lanes");
    }

    #[test]
    fn hostile_kdf_parameters_are_refused() {
        let master = MasterKey([4; 32]);
        let pw = Secret::Password(b"pw".to_vec());
        let mut slot = KeySlot::create("repo", &pw, &master).unwrap();
        slot.kdf.as_mut().unwrap().memory_kib = u32::MAX;
        assert!(slot.open("repo", &pw).is_err());
    }
}
