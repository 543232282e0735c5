//! Files the tests make and look at: disk images, repositories' chunk and point files.

use std::fs::{self, File};
use std::io::Read;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// Overwrites `data` at `offset` in an existing file, keeping the rest (a VM writing to its disk).
pub fn patch_file(path: &Path, offset: u64, data: &[u8]) {
    let f = fs::OpenOptions::new().write(true).open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    f.write_all_at(data, offset).expect("patch file");
}

/// How many point files a repository or replica holds.
pub fn point_count(repo: &Path) -> usize {
    fs::read_dir(repo.join("points")).map_or(0, |dirs| dirs.flatten().map(|d| fs::read_dir(d.path()).map_or(0, |f| f.count())).sum())
}

/// Flips one byte in the middle of a file (a damaged chunk).
pub fn corrupt_file(path: &Path) {
    let mut bytes = fs::read(path).expect("file to corrupt");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x5a;
    fs::write(path, bytes).expect("write corrupted file");
}

/// Deterministic incompressible bytes (xorshift64*, fast even in debug builds).
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Writes a sparse image of `size` bytes with `writes` (offset, bytes) and nothing elsewhere.
pub fn write_image(path: &Path, size: u64, writes: &[(u64, Vec<u8>)]) {
    let f = File::create(path).expect("create image");
    f.set_len(size).expect("size image");
    for (offset, data) in writes {
        f.write_all_at(data, *offset).expect("write image");
    }
}

/// SHA-256 of a file, hex.
pub fn sha256_file(path: &Path) -> String {
    let mut f = File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).expect("read");
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    hex::encode(h.finalize())
}

/// Bytes the file system has allocated for a file.
pub fn allocated_bytes(path: &Path) -> u64 {
    fs::metadata(path).expect("stat").blocks() * 512
}

/// Every chunk file in a repository.
pub fn chunk_files(repo: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for dir in fs::read_dir(repo.join("chunks")).expect("chunks folder") {
        for f in fs::read_dir(dir.expect("entry").path()).expect("chunk subfolder") {
            out.push(f.expect("entry").path());
        }
    }
    out.sort();
    out
}
