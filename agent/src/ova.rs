//! OVA archives: USTAR, the `.ovf` first, then the `.mf`, then the files in References order.
//! Files of 8 GiB and more get their size in the base-256 form GNU tar and VMware read.

use std::io::{self, Write};

use crate::error::{AgentError, Result};

const BLOCK: usize = 512;

fn octal(field: &mut [u8], value: u64) {
    let digits = field.len() - 1;
    let text = format!("{value:0digits$o}");
    field[..digits].copy_from_slice(text.as_bytes());
    field[digits] = 0;
}

/// Builds the 512-byte USTAR header of a regular file.
pub fn header(name: &str, size: u64, mtime: u64) -> Result<[u8; BLOCK]> {
    if name.is_empty() || name.len() > 100 || !name.is_ascii() || name.contains('/') {
        return Err(AgentError::Invalid(format!("file name {name:?} cannot be stored in an OVA (plain ASCII, at most 100 bytes)")));
    }
    let mut h = [0u8; BLOCK];
    h[..name.len()].copy_from_slice(name.as_bytes());
    octal(&mut h[100..108], 0o644);
    octal(&mut h[108..116], 0);
    octal(&mut h[116..124], 0);
    if size < 1 << 33 {
        octal(&mut h[124..136], size);
    } else {
        h[124] = 0x80;
        h[128..136].copy_from_slice(&size.to_be_bytes());
    }
    octal(&mut h[136..148], mtime.min(0o77777777777));
    h[156] = b'0';
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].fill(b' ');
    let sum: u32 = h.iter().map(|&b| b as u32).sum();
    let text = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(text.as_bytes());
    Ok(h)
}

/// A USTAR archive being written front to back (see [`crate::ova_stream`]).
pub struct Archive<W: Write> {
    out: W,
    mtime: u64,
}

fn tar_err(e: io::Error) -> AgentError {
    AgentError::Invalid(format!("writing the OVA: {e}"))
}

impl<W: Write> Archive<W> {
    /// An archive written to `out`; its files are dated now.
    pub fn new(out: W) -> Self {
        let mtime = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        Archive { out, mtime }
    }

    /// Adds a file held in memory.
    pub fn file(&mut self, name: &str, bytes: &[u8]) -> Result<()> {
        self.begin(name, bytes.len() as u64)?.write_all(bytes).map_err(tar_err)?;
        self.end_file(bytes.len() as u64)
    }

    /// Starts a file of `size` bytes: its content is then written to the returned writer, and
    /// [`Archive::end_file`] called with the count written.
    pub fn begin(&mut self, name: &str, size: u64) -> Result<&mut W> {
        self.out.write_all(&header(name, size, self.mtime)?).map_err(tar_err)?;
        Ok(&mut self.out)
    }

    /// Ends a file whose content was `size` bytes (pads it to the block size).
    pub fn end_file(&mut self, size: u64) -> Result<()> {
        let pad = (BLOCK - (size % BLOCK as u64) as usize) % BLOCK;
        self.out.write_all(&[0u8; BLOCK][..pad]).map_err(tar_err)
    }

    /// Writes the end of the archive; returns the writer, flushed.
    pub fn finish(mut self) -> Result<W> {
        self.out.write_all(&[0u8; 2 * BLOCK]).and_then(|_| self.out.flush()).map_err(tar_err)?;
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_checksum_and_sizes() {
        let h = header("vm.ovf", 1234, 0).unwrap();
        let stored = u32::from_str_radix(std::str::from_utf8(&h[148..154]).unwrap(), 8).unwrap();
        let mut copy = h;
        copy[148..156].fill(b' ');
        assert_eq!(stored, copy.iter().map(|&b| b as u32).sum::<u32>());
        assert_eq!(&h[124..135], b"00000002322");
        let big = header("d.vmdk", 10 << 30, 0).unwrap();
        assert_eq!(big[124], 0x80);
        assert_eq!(u64::from_be_bytes(big[128..136].try_into().unwrap()), 10 << 30);
        assert!(header("a/b", 1, 0).is_err());
        assert!(header(&"x".repeat(101), 1, 0).is_err());
    }
}
