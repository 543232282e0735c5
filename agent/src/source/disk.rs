//! A raw disk image opened for reading: positional reads and hole detection.

use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::error::{AgentError, Result};

/// A raw image (file or block device) read by offset.
pub struct RawDisk {
    file: File,
    path: PathBuf,
    size: u64,
}

impl RawDisk {
    /// Opens a raw image read-only.
    pub fn open(path: &Path) -> Result<Self> {
        let mut file = File::open(path).map_err(AgentError::io("open disk", path))?;
        let size = file.seek(SeekFrom::End(0)).map_err(AgentError::io("size disk", path))?;
        Ok(RawDisk { file, path: path.to_path_buf(), size })
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Whether `[offset, offset + len)` may hold data. Uses `SEEK_DATA`: false only when the
    /// file system reports the whole range as a hole.
    pub fn may_have_data(&self, offset: u64, len: u64) -> bool {
        // SAFETY: lseek on a descriptor that `self.file` keeps open; it changes only the file
        // position, which positional reads do not use.
        let next = unsafe { libc::lseek(self.file.as_raw_fd(), offset as libc::off_t, libc::SEEK_DATA) };
        if next < 0 {
            // ENXIO: no data after offset. Anything else (e.g. no SEEK_DATA support): assume data.
            return std::io::Error::last_os_error().raw_os_error() != Some(libc::ENXIO);
        }
        (next as u64) < offset + len
    }

    /// Fills `buf` from `offset`.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.file.read_exact_at(buf, offset).map_err(AgentError::io("read disk", &self.path))
    }
}

/// Whether every byte of `data` is zero (16 bytes at a time, which the compiler vectorises).
pub fn is_zero(data: &[u8]) -> bool {
    let chunks = data.chunks_exact(16);
    let tail = chunks.remainder();
    tail.iter().all(|&b| b == 0) && chunks.into_iter().all(|c| u128::from_ne_bytes(c.try_into().expect("16-byte chunk")) == 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn holes_and_zeros() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.img");
        let mut f = File::create(&path).unwrap();
        f.set_len(8 << 20).unwrap();
        f.seek(SeekFrom::Start(4 << 20)).unwrap();
        f.write_all(b"data").unwrap();
        drop(f);
        let d = RawDisk::open(&path).unwrap();
        assert_eq!(d.size(), 8 << 20);
        assert!(d.may_have_data(4 << 20, 1 << 20));
        let mut buf = [0u8; 4];
        d.read_at(4 << 20, &mut buf).unwrap();
        assert_eq!(&buf, b"data");
        assert!(is_zero(&[0u8; 1000]));
        let mut v = vec![0u8; 1000];
        v[999] = 1;
        assert!(!is_zero(&v));
        v[999] = 0;
        v[3] = 1;
        assert!(!is_zero(&v));
    }
}
