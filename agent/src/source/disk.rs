//! A raw disk image opened for reading: positional reads and hole detection; a local file, or a
//! disk read by ranges from elsewhere ([`RangeRead`]: a vSphere datastore).

use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{AgentError, Result};

/// A raw disk read by byte ranges from elsewhere.
pub trait RangeRead: Send + Sync + std::fmt::Debug {
    /// Size in bytes.
    fn size(&self) -> u64;
    /// Fills `buf` from `offset`.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()>;
}

/// A raw image (file or block device, or a [`RangeRead`]) read by offset.
pub struct RawDisk {
    from: From,
    size: u64,
}

enum From {
    File { file: File, path: PathBuf },
    Remote(Arc<dyn RangeRead>),
}

impl RawDisk {
    /// Opens a raw image read-only.
    pub fn open(path: &Path) -> Result<Self> {
        let mut file = File::open(path).map_err(AgentError::io("open disk", path))?;
        let size = file.seek(SeekFrom::End(0)).map_err(AgentError::io("size disk", path))?;
        Ok(RawDisk { from: From::File { file, path: path.to_path_buf() }, size })
    }

    /// Opens a source VM's disk, wherever it is.
    pub fn of(disk: &super::SourceDisk) -> Result<Self> {
        match &disk.remote {
            Some(remote) => Ok(RawDisk { size: remote.size(), from: From::Remote(Arc::clone(remote)) }),
            None => Self::open(&disk.raw_path),
        }
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Whether `[offset, offset + len)` may hold data. Uses `SEEK_DATA`: false only when the
    /// file system reports the whole range as a hole.
    pub fn may_have_data(&self, offset: u64, len: u64) -> bool {
        // A remote disk says nothing of its holes: every range is read (zeros are still found).
        let From::File { file, .. } = &self.from else { return true };
        // SAFETY: lseek on a descriptor that `self.file` keeps open; it changes only the file
        // position, which positional reads do not use.
        let next = unsafe { libc::lseek(file.as_raw_fd(), offset as libc::off_t, libc::SEEK_DATA) };
        if next < 0 {
            // ENXIO: no data after offset. Anything else (e.g. no SEEK_DATA support): assume data.
            return std::io::Error::last_os_error().raw_os_error() != Some(libc::ENXIO);
        }
        (next as u64) < offset + len
    }

    /// Fills `buf` from `offset`.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        match &self.from {
            From::File { file, path } => file.read_exact_at(buf, offset).map_err(AgentError::io("read disk", path)),
            From::Remote(remote) => remote.read_at(offset, buf),
        }
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
