//! Key material of a repository and the primitives built on it.
//!
//! One random 32-byte master key per repository. Three independent keys are derived from it with
//! BLAKE3's key derivation: the AES-256-GCM data key, the BLAKE3 key for chunk ids, and the key
//! that authenticates recovery points. The master key itself is stored only wrapped (see `keys`),
//! or in the clear in the config of a repository created with `--no-encryption`.

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, Tag, UnboundKey};

/// Length of every symmetric key used here.
pub const KEY_LEN: usize = 32;
/// Length of an AES-GCM nonce.
pub const NONCE_LEN: usize = 12;
/// Length of an AES-GCM tag.
pub const TAG_LEN: usize = 16;

const CONTEXT_DATA: &str = "hyperexport 2026-11 chunk encryption key v1";
const CONTEXT_ID: &str = "hyperexport 2026-11 chunk id key v1";
const CONTEXT_MAC: &str = "hyperexport 2026-11 recovery point mac key v1";

/// An AES-256-GCM key (ring's implementation: AES-NI/VAES and carry-less multiply assembly).
fn aes_key(key: &[u8; KEY_LEN]) -> LessSafeKey {
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key).expect("a 32-byte key is valid for AES-256-GCM"))
}

/// Fills `buf` from the operating system's random source.
pub fn random_bytes(buf: &mut [u8]) {
    // The OS RNG failing is not an input error: nothing can be written safely without it.
    getrandom::getrandom(buf).expect("the operating system's random number generator failed");
}

/// A repository's master key.
#[derive(Clone)]
pub struct MasterKey(pub [u8; KEY_LEN]);

impl MasterKey {
    /// A new random master key.
    pub fn generate() -> Self {
        let mut key = [0u8; KEY_LEN];
        random_bytes(&mut key);
        MasterKey(key)
    }
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

/// The keys derived from a master key, ready for use.
#[derive(Clone)]
pub struct RepoKeys {
    cipher: Option<LessSafeKey>,
    id_key: [u8; KEY_LEN],
    mac_key: [u8; KEY_LEN],
}

impl RepoKeys {
    /// Derives the working keys; `encrypted` false gives a repository whose chunks are stored
    /// in the clear (ids and point MACs are still keyed).
    pub fn derive(master: &MasterKey, encrypted: bool) -> Self {
        let data_key = blake3::derive_key(CONTEXT_DATA, &master.0);
        RepoKeys {
            cipher: encrypted.then(|| aes_key(&data_key)),
            id_key: blake3::derive_key(CONTEXT_ID, &master.0),
            mac_key: blake3::derive_key(CONTEXT_MAC, &master.0),
        }
    }

    /// Whether chunk payloads are encrypted.
    pub fn encrypts(&self) -> bool {
        self.cipher.is_some()
    }

    /// The keyed BLAKE3 hash that names a chunk.
    pub fn chunk_id(&self, plaintext: &[u8]) -> [u8; 32] {
        *blake3::keyed_hash(&self.id_key, plaintext).as_bytes()
    }

    /// The MAC that authenticates a recovery point's bytes (its `==` is constant-time).
    pub fn mac(&self, data: &[u8]) -> blake3::Hash {
        blake3::keyed_hash(&self.mac_key, data)
    }

    /// Encrypts `buf` in place; returns the tag. Does nothing and returns `None` when the
    /// repository is not encrypted.
    pub fn seal(&self, nonce: &[u8; NONCE_LEN], aad: &[u8], buf: &mut [u8]) -> Option<[u8; TAG_LEN]> {
        let cipher = self.cipher.as_ref()?;
        let tag = cipher
            .seal_in_place_separate_tag(Nonce::assume_unique_for_key(*nonce), Aad::from(aad), buf)
            .expect("AES-GCM encryption of a chunk below 64 GiB cannot fail");
        Some(tag.as_ref().try_into().expect("AES-GCM tags are 16 bytes"))
    }

    /// Decrypts `buf` in place, checking the tag; false when authentication fails or the
    /// repository is not encrypted.
    pub fn open(&self, nonce: &[u8; NONCE_LEN], aad: &[u8], buf: &mut [u8], tag: &[u8; TAG_LEN]) -> bool {
        match &self.cipher {
            Some(c) => {
                c.open_in_place_separate_tag(Nonce::assume_unique_for_key(*nonce), Aad::from(aad), Tag::from(*tag), buf, 0..).is_ok()
            }
            None => false,
        }
    }
}

/// Encrypts a small secret (a wrapped key) with a one-off key: returns nonce || ciphertext || tag.
pub fn wrap(key: &[u8; KEY_LEN], aad: &[u8], secret: &[u8]) -> Vec<u8> {
    let mut nonce = [0u8; NONCE_LEN];
    random_bytes(&mut nonce);
    let mut buf = secret.to_vec();
    let tag = aes_key(key)
        .seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad), &mut buf)
        .expect("AES-GCM encryption of a key cannot fail");
    let mut out = nonce.to_vec();
    out.extend_from_slice(&buf);
    out.extend_from_slice(tag.as_ref());
    out
}

/// Reverses [`wrap`]; `None` when the key is wrong or the data was altered.
pub fn unwrap(key: &[u8; KEY_LEN], aad: &[u8], wrapped: &[u8]) -> Option<Vec<u8>> {
    if wrapped.len() < NONCE_LEN + TAG_LEN {
        return None;
    }
    let (nonce, rest) = wrapped.split_at(NONCE_LEN);
    let (body, tag) = rest.split_at(rest.len() - TAG_LEN);
    let nonce: [u8; NONCE_LEN] = nonce.try_into().ok()?;
    let tag: [u8; TAG_LEN] = tag.try_into().ok()?;
    let mut buf = body.to_vec();
    aes_key(key).open_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad), Tag::from(tag), &mut buf, 0..).ok()?;
    Some(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_independent_and_deterministic() {
        let m = MasterKey([1; 32]);
        let a = RepoKeys::derive(&m, true);
        let b = RepoKeys::derive(&m, false);
        assert_eq!(a.chunk_id(b"x"), b.chunk_id(b"x"));
        assert_ne!(a.chunk_id(b"x"), *a.mac(b"x").as_bytes());
        let other = RepoKeys::derive(&MasterKey([2; 32]), true);
        assert_ne!(a.chunk_id(b"x"), other.chunk_id(b"x"));
    }

    #[test]
    fn wrap_round_trip_and_wrong_key() {
        let w = wrap(&[9; 32], b"aad", b"secret");
        assert_eq!(unwrap(&[9; 32], b"aad", &w).unwrap(), b"secret");
        assert!(unwrap(&[8; 32], b"aad", &w).is_none());
        assert!(unwrap(&[9; 32], b"other", &w).is_none());
        assert!(unwrap(&[9; 32], b"aad", &w[..10]).is_none());
    }
}
