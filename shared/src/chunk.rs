//! Chunk ids and the stored chunk blob format (`docs/FORMAT.md`, "Chunk blobs").
//!
//! ```text
//! magic "HXCK" | version u8 = 1 | flags u8 | nonce [12] | payload | tag [16] (encrypted only)
//! flags: bits 0-3 compression (0 none, 1 zstd, 2 lz4), bits 4-7 cipher (0 none, 1 AES-256-GCM)
//! ```
//! The AES-GCM associated data is the 6 header bytes followed by the 32-byte chunk id, so a blob
//! cannot be moved to another id or have its flags altered without failing authentication.

use std::cell::RefCell;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::compress::{self, Compression};
use crate::crypto::{NONCE_LEN, RepoKeys, TAG_LEN, random_bytes};
use crate::direct_io::AlignedBuf;

/// First four bytes of every chunk blob.
pub const MAGIC: [u8; 4] = *b"HXCK";
/// The blob format version this build writes and reads.
pub const BLOB_VERSION: u8 = 1;
/// Bytes before the payload.
pub const HEADER_LEN: usize = 6 + NONCE_LEN;
/// Smallest allowed chunk size.
pub const MIN_CHUNK_SIZE: u32 = 64 * 1024;
/// Largest allowed chunk size, and the limit on any decoded chunk.
pub const MAX_CHUNK_SIZE: u32 = 16 * 1024 * 1024;
/// Default chunk size.
pub const DEFAULT_CHUNK_SIZE: u32 = 4 * 1024 * 1024;

const CIPHER_NONE: u8 = 0;
const CIPHER_AES_256_GCM: u8 = 1;

/// Checks that a chunk size is a power of two within the allowed range.
pub fn validate_chunk_size(size: u64) -> Result<u32, String> {
    if !size.is_power_of_two() || size < MIN_CHUNK_SIZE as u64 || size > MAX_CHUNK_SIZE as u64 {
        return Err(format!("chunk size {size} must be a power of two from 64 KiB to 16 MiB"));
    }
    Ok(size as u32)
}

/// A chunk's id: the keyed BLAKE3 hash of its plaintext.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkId(pub [u8; 32]);

impl ChunkId {
    /// Lower-case hex form (64 characters), as used in file names and points.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkId({})", &self.to_hex()[..16])
    }
}

impl FromStr for ChunkId {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let mut id = [0u8; 32];
        if s.len() != 64 || hex::decode_to_slice(s, &mut id).is_err() || s.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(format!("chunk id {s:?} is not 64 lower-case hex digits"));
        }
        Ok(ChunkId(id))
    }
}

impl Serialize for ChunkId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for ChunkId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

thread_local! {
    /// This thread's blob buffer, reused for every chunk it encodes.
    static BLOB: RefCell<AlignedBuf> = RefCell::new(AlignedBuf::default());
}

/// Builds the stored blob for a chunk.
pub fn encode(keys: &RepoKeys, compression: Compression, id: &ChunkId, plaintext: &[u8]) -> Vec<u8> {
    encode_with(keys, compression, id, plaintext, <[u8]>::to_vec)
}

/// Builds the stored blob for a chunk and hands it to `f`. The blob is built in place (compressed
/// straight after the header, encrypted where it lies) in a buffer kept per thread that starts at
/// a block-aligned address, so storing a chunk allocates nothing and an `O_DIRECT` write needs
/// no copy of it.
pub fn encode_with<T>(keys: &RepoKeys, compression: Compression, id: &ChunkId, plaintext: &[u8], f: impl FnOnce(&[u8]) -> T) -> T {
    BLOB.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => f(encode_into(keys, compression, id, plaintext, &mut buf)),
        // Only if `f` encodes another chunk on this thread.
        Err(_) => f(encode_into(keys, compression, id, plaintext, &mut AlignedBuf::default())),
    })
}

fn encode_into<'a>(keys: &RepoKeys, compression: Compression, id: &ChunkId, plaintext: &[u8], buf: &'a mut AlignedBuf) -> &'a [u8] {
    let room = HEADER_LEN + compression.max_output(plaintext.len()).max(plaintext.len()) + TAG_LEN;
    let out = buf.region(room);
    let body = &mut out[HEADER_LEN..room - TAG_LEN];
    let (code, payload_len) = match compression.compress_into(plaintext, body) {
        Some(len) => (compression.code(), len),
        None => {
            body[..plaintext.len()].copy_from_slice(plaintext);
            (0, plaintext.len())
        }
    };
    let cipher = if keys.encrypts() { CIPHER_AES_256_GCM } else { CIPHER_NONE };
    out[..4].copy_from_slice(&MAGIC);
    out[4] = BLOB_VERSION;
    out[5] = code | (cipher << 4);
    let mut nonce = [0u8; NONCE_LEN];
    if cipher == CIPHER_AES_256_GCM {
        random_bytes(&mut nonce);
    }
    out[6..HEADER_LEN].copy_from_slice(&nonce);
    let aad = associated_data(&out[..6], id);
    let end = HEADER_LEN + payload_len;
    match keys.seal(&nonce, &aad, &mut out[HEADER_LEN..end]) {
        Some(tag) => {
            out[end..end + TAG_LEN].copy_from_slice(&tag);
            &out[..end + TAG_LEN]
        }
        None => &out[..end],
    }
}

fn associated_data(header: &[u8], id: &ChunkId) -> [u8; 38] {
    let mut aad = [0u8; 38];
    aad[..6].copy_from_slice(header);
    aad[6..].copy_from_slice(&id.0);
    aad
}

/// Decodes a stored blob: checks the header, the tag, decompresses (at most `max_len` bytes) and
/// re-checks that the plaintext hashes to `id`. The error says which step failed.
pub fn decode(keys: &RepoKeys, id: &ChunkId, mut blob: Vec<u8>, max_len: usize) -> Result<Vec<u8>, String> {
    if blob.len() < HEADER_LEN {
        return Err(format!("blob is {} bytes, shorter than the {HEADER_LEN}-byte header", blob.len()));
    }
    if blob[..4] != MAGIC {
        return Err("blob does not start with the HXCK magic".into());
    }
    if blob[4] != BLOB_VERSION {
        return Err(format!("blob format version {} is not supported (this build reads {BLOB_VERSION})", blob[4]));
    }
    let (code, cipher) = (blob[5] & 0x0f, blob[5] >> 4);
    let payload_end = match cipher {
        CIPHER_NONE if keys.encrypts() => return Err("blob is not encrypted but the repository is".into()),
        CIPHER_NONE => blob.len(),
        CIPHER_AES_256_GCM => {
            if blob.len() < HEADER_LEN + TAG_LEN {
                return Err("encrypted blob is shorter than header and tag".into());
            }
            let tag_at = blob.len() - TAG_LEN;
            let tag: [u8; TAG_LEN] = blob[tag_at..].try_into().expect("slice of TAG_LEN");
            let nonce: [u8; NONCE_LEN] = blob[6..HEADER_LEN].try_into().expect("slice of NONCE_LEN");
            let aad = associated_data(&blob[..6], id);
            if !keys.open(&nonce, &aad, &mut blob[HEADER_LEN..tag_at], &tag) {
                return Err("authentication tag does not match (altered or truncated data, or another key)".into());
            }
            tag_at
        }
        other => return Err(format!("unknown cipher code {other}")),
    };
    let plain = if code == 0 {
        if payload_end - HEADER_LEN > max_len {
            return Err(format!("payload of {} bytes exceeds the limit of {max_len}", payload_end - HEADER_LEN));
        }
        blob.truncate(payload_end);
        blob.drain(..HEADER_LEN);
        blob
    } else {
        compress::decompress(code, &blob[HEADER_LEN..payload_end], max_len)?
    };
    if keys.chunk_id(&plain) != id.0 {
        return Err("content does not hash to the chunk id".into());
    }
    Ok(plain)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::MasterKey;
    use proptest::prelude::*;

    fn keys(encrypted: bool) -> RepoKeys {
        RepoKeys::derive(&MasterKey([3; 32]), encrypted)
    }

    #[test]
    fn detects_every_kind_of_damage() {
        let k = keys(true);
        let data = b"hello world hello world hello world".repeat(100);
        let id = ChunkId(k.chunk_id(&data));
        let blob = encode(&k, Compression::Zstd(3), &id, &data);
        assert_eq!(decode(&k, &id, blob.clone(), 1 << 20).unwrap(), data);
        let mut flipped = blob.clone();
        let last = flipped.len() - 20;
        flipped[last] ^= 1;
        assert!(decode(&k, &id, flipped, 1 << 20).unwrap_err().contains("tag"));
        assert!(decode(&k, &id, blob[..10].to_vec(), 1 << 20).is_err());
        assert!(decode(&k, &id, blob[..blob.len() - 1].to_vec(), 1 << 20).is_err());
        let other = ChunkId([0; 32]);
        assert!(decode(&k, &other, blob.clone(), 1 << 20).is_err());
        let mut bad_flags = blob.clone();
        bad_flags[5] = 0x12;
        assert!(decode(&k, &id, bad_flags, 1 << 20).is_err());
        assert!(decode(&k, &id, blob, 10).is_err());
    }

    #[test]
    fn plaintext_blobs_are_checked_by_id() {
        let k = keys(false);
        let data = vec![1u8; 1000];
        let id = ChunkId(k.chunk_id(&data));
        let mut blob = encode(&k, Compression::None, &id, &data);
        assert_eq!(decode(&k, &id, blob.clone(), 4096).unwrap(), data);
        blob[HEADER_LEN + 3] ^= 0xff;
        assert!(decode(&k, &id, blob, 4096).unwrap_err().contains("hash"));
        // An unencrypted blob is refused by an encrypted repository.
        let plain = encode(&k, Compression::None, &id, &data);
        assert!(decode(&keys(true), &id, plain, 4096).is_err());
    }

    #[test]
    fn chunk_id_text_form() {
        let id = ChunkId([0xab; 32]);
        assert_eq!(id.to_hex().parse::<ChunkId>().unwrap(), id);
        assert!("AB".repeat(32).parse::<ChunkId>().is_err());
        assert!("ab".parse::<ChunkId>().is_err());
        assert!(validate_chunk_size(4 << 20).is_ok());
        assert!(validate_chunk_size(3 << 20).is_err());
        assert!(validate_chunk_size(32 << 20).is_err());
    }

    proptest! {
        #[test]
        fn round_trips(data in proptest::collection::vec(any::<u8>(), 0..5000), enc: bool, c in 0..3u8) {
            let k = keys(enc);
            let comp = [Compression::None, Compression::Zstd(1), Compression::Lz4][c as usize];
            let id = ChunkId(k.chunk_id(&data));
            let blob = encode(&k, comp, &id, &data);
            prop_assert_eq!(decode(&k, &id, blob, 5000).unwrap(), data);
        }

        #[test]
        fn never_panics_on_garbage(blob in proptest::collection::vec(any::<u8>(), 0..200), enc: bool) {
            let _ = decode(&keys(enc), &ChunkId([0; 32]), blob, 1 << 16);
        }
    }
}
