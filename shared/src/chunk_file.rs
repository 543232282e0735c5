//! Writing chunk files: with `O_DIRECT` where the file system takes it, buffered otherwise.
//!
//! A repository's chunks are written once and rarely read soon after, so copying them through
//! the page cache only costs CPU (on our VMs, more than compressing them) and evicts the source
//! disk's pages. `O_DIRECT` needs block-aligned buffers and lengths: the blob is copied into an
//! aligned scratch buffer, padded with zeros to the block size, written, and the file is cut
//! back to the blob's length. Durability still comes from `Repository::sync` (`syncfs` flushes
//! the device cache and the file sizes) before a point refers to the chunk.

use std::cell::RefCell;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

/// Alignment of buffer address, file offset and length for `O_DIRECT` (the largest logical
/// block size in common use).
const ALIGN: usize = 4096;

thread_local! {
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Writes chunk files, remembering whether the file system accepts `O_DIRECT`.
#[derive(Debug)]
pub struct ChunkWriter {
    direct: AtomicBool,
}

impl Default for ChunkWriter {
    fn default() -> Self {
        ChunkWriter { direct: AtomicBool::new(true) }
    }
}

impl ChunkWriter {
    /// Creates `path` (which must not exist) holding exactly `blob`.
    pub fn write_new(&self, path: &Path, blob: &[u8]) -> io::Result<()> {
        if self.direct.load(Ordering::Relaxed) {
            match write_direct(path, blob) {
                Ok(()) => return Ok(()),
                // EINVAL: the file system (tmpfs, some FUSE) does not do O_DIRECT.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    self.direct.store(false, Ordering::Relaxed);
                    let _ = fs::remove_file(path);
                }
                Err(e) => return Err(e),
            }
        }
        let mut file = OpenOptions::new().write(true).create_new(true).open(path)?;
        file.write_all(blob)?;
        start_writeback(&file);
        Ok(())
    }
}

fn write_direct(path: &Path, blob: &[u8]) -> io::Result<()> {
    let padded = blob.len().next_multiple_of(ALIGN);
    let mut file = OpenOptions::new().write(true).create_new(true).custom_flags(libc::O_DIRECT).open(path)?;
    SCRATCH.with(|scratch| {
        let mut scratch = scratch.borrow_mut();
        if scratch.len() < padded + ALIGN {
            scratch.resize(padded + ALIGN, 0);
        }
        let start = scratch.as_ptr().align_offset(ALIGN);
        let region = &mut scratch[start..start + padded];
        region[..blob.len()].copy_from_slice(blob);
        region[blob.len()..].fill(0);
        file.write_all(region)
    })?;
    file.set_len(blob.len() as u64)
}

/// Asks the kernel to start writing a file's dirty pages now, without waiting for them, so the
/// final `syncfs` has little left to do. Purely a hint: errors are ignored.
fn start_writeback(file: &File) {
    // SAFETY: sync_file_range only reads the descriptor, which `file` keeps open for the call.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_hold_exactly_the_blob_whatever_its_length() {
        let dir = tempfile::tempdir().unwrap();
        let writer = ChunkWriter::default();
        for len in [18, 4095, 4096, 4097, 3 * 4096 + 5, 1 << 20] {
            let blob: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let path = dir.path().join(format!("c{len}"));
            writer.write_new(&path, &blob).unwrap();
            assert_eq!(fs::read(&path).unwrap(), blob, "length {len}");
            assert!(writer.write_new(&path, &blob).is_err(), "an existing file is never overwritten");
        }
    }
}
