//! A SHA-256 whose state can be saved at a block boundary and resumed later, so that an export
//! resumed from a checkpoint gets the whole-disk digest without reading the disk's start again.
//!
//! The compression function is the `sha2` crate's (SHA-NI where the CPU has it); this module only
//! keeps the chaining state, the length and the padding, which FIPS 180-4 §5–6 define.

use sha2::compress256;
use sha2::digest::generic_array::GenericArray;
use sha2::digest::generic_array::typenum::U64;

const BLOCK: usize = 64;
const INITIAL: [u32; 8] = [0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19];

/// Bytes of a saved state: the eight chaining words, big-endian.
pub const STATE_LEN: usize = 32;

/// Incremental SHA-256 with a resumable state.
#[derive(Clone)]
pub struct ResumableSha256 {
    state: [u32; 8],
    /// Bytes hashed so far.
    len: u64,
    buf: [u8; BLOCK],
    buffered: usize,
}

impl Default for ResumableSha256 {
    fn default() -> Self {
        Self::new()
    }
}

impl ResumableSha256 {
    /// A fresh hash.
    pub fn new() -> Self {
        ResumableSha256 { state: INITIAL, len: 0, buf: [0; BLOCK], buffered: 0 }
    }

    /// Continues a hash saved by [`Self::save`] after `len` bytes; `None` if the state is not
    /// 32 bytes or `len` is not a multiple of 64.
    pub fn resume(saved: &[u8], len: u64) -> Option<Self> {
        if saved.len() != STATE_LEN || !len.is_multiple_of(BLOCK as u64) {
            return None;
        }
        let mut state = [0u32; 8];
        for (word, bytes) in state.iter_mut().zip(saved.chunks_exact(4)) {
            *word = u32::from_be_bytes(bytes.try_into().expect("4 bytes"));
        }
        Some(ResumableSha256 { state, len, buf: [0; BLOCK], buffered: 0 })
    }

    /// The state to resume from, when the bytes hashed so far are a whole number of blocks.
    pub fn save(&self) -> Option<[u8; STATE_LEN]> {
        if self.buffered != 0 {
            return None;
        }
        let mut out = [0u8; STATE_LEN];
        for (bytes, word) in out.chunks_exact_mut(4).zip(self.state) {
            bytes.copy_from_slice(&word.to_be_bytes());
        }
        Some(out)
    }

    /// Hashes `data`.
    pub fn update(&mut self, mut data: &[u8]) {
        self.len += data.len() as u64;
        if self.buffered > 0 {
            let take = (BLOCK - self.buffered).min(data.len());
            self.buf[self.buffered..self.buffered + take].copy_from_slice(&data[..take]);
            self.buffered += take;
            data = &data[take..];
            if self.buffered < BLOCK {
                return;
            }
            compress256(&mut self.state, &[GenericArray::clone_from_slice(&self.buf)]);
            self.buffered = 0;
        }
        // All whole blocks in one call: the SHA-NI code keeps the state in registers across
        // them (one call per block cost ~8% of the throughput in shuffling it in and out).
        let (blocks, rest) = data.as_chunks::<BLOCK>();
        compress256(&mut self.state, as_generic(blocks));
        self.buf[..rest.len()].copy_from_slice(rest);
        self.buffered = rest.len();
    }

    /// The digest.
    pub fn finalize(mut self) -> [u8; 32] {
        let bits = self.len.wrapping_mul(8);
        let mut tail = [0u8; 2 * BLOCK];
        tail[..self.buffered].copy_from_slice(&self.buf[..self.buffered]);
        tail[self.buffered] = 0x80;
        let total = if self.buffered < BLOCK - 8 { BLOCK } else { 2 * BLOCK };
        tail[total - 8..total].copy_from_slice(&bits.to_be_bytes());
        for block in tail[..total].chunks_exact(BLOCK) {
            compress256(&mut self.state, &[GenericArray::clone_from_slice(block)]);
        }
        let mut out = [0u8; 32];
        for (bytes, word) in out.chunks_exact_mut(4).zip(self.state) {
            bytes.copy_from_slice(&word.to_be_bytes());
        }
        out
    }
}

const _: () = assert!(size_of::<GenericArray<u8, U64>>() == BLOCK && align_of::<GenericArray<u8, U64>>() == 1);

/// The same blocks as the type `compress256` takes.
fn as_generic(blocks: &[[u8; BLOCK]]) -> &[GenericArray<u8, U64>] {
    // SAFETY: `GenericArray<u8, U64>` is `repr(transparent)` over a 64-byte array of `u8`
    // (size 64, alignment 1), so a slice of `[u8; 64]` is a valid slice of it, of the same length.
    unsafe { std::slice::from_raw_parts(blocks.as_ptr().cast(), blocks.len()) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use sha2::{Digest, Sha256};

    #[test]
    fn known_answers() {
        let hex = |d: [u8; 32]| hex::encode(d);
        assert_eq!(hex(ResumableSha256::new().finalize()), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
        let mut h = ResumableSha256::new();
        h.update(b"abc");
        assert_eq!(hex(h.finalize()), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }

    proptest! {
        #[test]
        fn matches_sha2_across_saves(data in proptest::collection::vec(any::<u8>(), 0..1000), cuts in proptest::collection::vec(0usize..1000, 0..5)) {
            let mut h = ResumableSha256::new();
            let mut at = 0;
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(data.len())).collect();
            cuts.sort();
            for cut in cuts {
                h.update(&data[at..cut]);
                at = cut;
                if let Some(saved) = h.save() {
                    h = ResumableSha256::resume(&saved, cut as u64).unwrap();
                }
            }
            h.update(&data[at..]);
            prop_assert_eq!(h.finalize(), <[u8; 32]>::from(Sha256::digest(&data)));
        }
    }

    #[test]
    fn bad_states_are_refused() {
        assert!(ResumableSha256::resume(&[0; 31], 0).is_none());
        assert!(ResumableSha256::resume(&[0; 32], 63).is_none());
        let mut h = ResumableSha256::new();
        h.update(&[1; 65]);
        assert!(h.save().is_none());
    }
}
