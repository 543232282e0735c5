//! Chunk blobs read from a repository are outside input: decoding must never panic, and must
//! accept nothing that does not hash to the id.
#![no_main]

use hyperexport_shared::chunk::{self, ChunkId};
use hyperexport_shared::crypto::{MasterKey, RepoKeys};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let id = ChunkId([7; 32]);
    for encrypted in [true, false] {
        let keys = RepoKeys::derive(&MasterKey([1; 32]), encrypted);
        if let Ok(plain) = chunk::decode(&keys, &id, data.to_vec(), 1 << 20) {
            assert_eq!(keys.chunk_id(&plain), id.0, "decode accepted content that does not hash to the id");
        }
    }
});
