//! A streamOptimized VMDK writer (VMware "Virtual Disk Format" 5.0, the disk format of OVAs):
//! a header, the embedded descriptor, then each grain that is not all zeros, deflated (zlib)
//! behind a grain marker, a grain table after every 512 grains' worth of disk, and at the end the
//! grain directory, a footer (the header again, now with the directory's offset) and the
//! end-of-stream marker. Written front to back, so it can go to a pipe or an upload with no
//! seeking and no temp file; the same input always gives the same bytes.

use std::io::{self, Write};

const SECTOR: u64 = 512;
/// Grain size: 64 KiB (128 sectors), as VMware writes them.
pub const GRAIN: usize = 64 << 10;
const GRAIN_SECTORS: u64 = GRAIN as u64 / SECTOR;
const GTES_PER_GT: u64 = 512;
/// Sectors before the first grain: header and descriptor, rounded up to one grain (as VMware).
const OVERHEAD_SECTORS: u64 = GRAIN_SECTORS;
const GD_AT_END: u64 = u64::MAX;
const MARKER_EOS: u32 = 0;
const MARKER_GT: u32 = 1;
const MARKER_GD: u32 = 2;
const MARKER_FOOTER: u32 = 3;

/// Writes one disk as a streamOptimized VMDK to `out`, grain by grain, in disk order.
pub struct StreamVmdk<W: Write> {
    out: W,
    /// Bytes written so far.
    at: u64,
    capacity_sectors: u64,
    descriptor_sectors: u64,
    /// Grain table being filled: sector offsets of the grains of table `table`.
    entries: Vec<u32>,
    table: u64,
    /// Sector offset of each grain table written (0: none, all its grains are zero).
    directory: Vec<u32>,
    next_grain: u64,
}

/// The descriptor of a monolithic streamOptimized disk of `capacity` bytes, file `name`.
pub fn descriptor(capacity: u64, name: &str) -> String {
    let sectors = capacity.div_ceil(SECTOR);
    let cylinders = (sectors / (255 * 63)).clamp(1, 65535);
    format!(
        "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType=\"streamOptimized\"\n\n\
         # Extent description\nRW {sectors} SPARSE \"{name}\"\n\n# The Disk Data Base\n#DDB\n\n\
         ddb.virtualHWVersion = \"4\"\nddb.geometry.cylinders = \"{cylinders}\"\nddb.geometry.heads = \"255\"\n\
         ddb.geometry.sectors = \"63\"\nddb.adapterType = \"lsilogic\"\n"
    )
}

fn header(capacity_sectors: u64, descriptor_sectors: u64, gd_offset: u64) -> [u8; SECTOR as usize] {
    let mut h = [0u8; SECTOR as usize];
    h[0..4].copy_from_slice(b"KDMV");
    h[4..8].copy_from_slice(&3u32.to_le_bytes());
    // Valid newline detection, compressed grains, markers.
    h[8..12].copy_from_slice(&0x0003_0001u32.to_le_bytes());
    h[12..20].copy_from_slice(&capacity_sectors.to_le_bytes());
    h[20..28].copy_from_slice(&GRAIN_SECTORS.to_le_bytes());
    h[28..36].copy_from_slice(&1u64.to_le_bytes());
    h[36..44].copy_from_slice(&descriptor_sectors.to_le_bytes());
    h[44..48].copy_from_slice(&(GTES_PER_GT as u32).to_le_bytes());
    h[56..64].copy_from_slice(&gd_offset.to_le_bytes());
    h[64..72].copy_from_slice(&OVERHEAD_SECTORS.to_le_bytes());
    h[73..77].copy_from_slice(b"\n \r\n");
    h[77..79].copy_from_slice(&1u16.to_le_bytes());
    h
}

fn marker(value: u64, kind: u32) -> [u8; SECTOR as usize] {
    let mut m = [0u8; SECTOR as usize];
    m[0..8].copy_from_slice(&value.to_le_bytes());
    m[12..16].copy_from_slice(&kind.to_le_bytes());
    m
}

/// A grain (at most [`GRAIN`] bytes; a short last grain is padded with zeros) deflated for
/// [`StreamVmdk::packed_grain`]; `None` for an all-zero grain, which is not stored.
pub fn pack(data: &[u8]) -> Option<Vec<u8>> {
    if data.iter().all(|&b| b == 0) {
        return None;
    }
    let data = &data[..data.len().min(GRAIN)];
    Some(if data.len() < GRAIN {
        let mut full = data.to_vec();
        full.resize(GRAIN, 0);
        miniz_oxide::deflate::compress_to_vec_zlib(&full, 1)
    } else {
        miniz_oxide::deflate::compress_to_vec_zlib(data, 1)
    })
}

fn too_big(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, format!("{what} does not fit a VMDK's 32-bit sector offsets (disk over 2 TiB)"))
}

impl<W: Write> StreamVmdk<W> {
    /// Starts a disk of `capacity` bytes named `name` (the file name the descriptor gives).
    pub fn new(mut out: W, capacity: u64, name: &str) -> io::Result<Self> {
        let capacity_sectors = capacity.div_ceil(SECTOR);
        let text = descriptor(capacity, name);
        let descriptor_sectors = (text.len() as u64).div_ceil(SECTOR);
        if 1 + descriptor_sectors > OVERHEAD_SECTORS {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "the VMDK descriptor is longer than 63 sectors"));
        }
        out.write_all(&header(capacity_sectors, descriptor_sectors, GD_AT_END))?;
        let mut padded = text.into_bytes();
        padded.resize(((OVERHEAD_SECTORS - 1) * SECTOR) as usize, 0);
        out.write_all(&padded)?;
        Ok(StreamVmdk {
            out,
            at: OVERHEAD_SECTORS * SECTOR,
            capacity_sectors,
            descriptor_sectors,
            entries: vec![0; GTES_PER_GT as usize],
            table: 0,
            directory: Vec::new(),
            next_grain: 0,
        })
    }

    fn sector(&self) -> io::Result<u32> {
        u32::try_from(self.at / SECTOR).map_err(|_| too_big("the stream"))
    }

    fn write_padded(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)?;
        let pad = (SECTOR - bytes.len() as u64 % SECTOR) % SECTOR;
        self.out.write_all(&[0u8; SECTOR as usize][..pad as usize])?;
        self.at += bytes.len() as u64 + pad;
        Ok(())
    }

    /// Writes the grain table being filled and moves on to the next one.
    fn close_table(&mut self) -> io::Result<()> {
        let offset = if self.entries.iter().any(|&e| e != 0) {
            self.write_padded(&marker(GTES_PER_GT * 4 / SECTOR, MARKER_GT))?;
            let start = self.sector()?;
            let bytes: Vec<u8> = self.entries.iter().flat_map(|e| e.to_le_bytes()).collect();
            self.write_padded(&bytes)?;
            start
        } else {
            0
        };
        self.directory.push(offset);
        self.entries.fill(0);
        self.table += 1;
        Ok(())
    }

    /// Writes grain `index` (bytes `index * GRAIN ..`): `data` is the whole grain, or less for
    /// the disk's last one. Grains come in increasing order; skipped ones read as zeros.
    pub fn grain(&mut self, index: u64, data: &[u8]) -> io::Result<()> {
        if data.len() > GRAIN {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("grain {index} holds {} bytes, more than a grain", data.len()),
            ));
        }
        self.packed_grain(index, pack(data))
    }

    /// Writes grain `index` as [`pack`] returned it (packing can run on other threads; the
    /// grains still come here in increasing order).
    pub fn packed_grain(&mut self, index: u64, packed: Option<Vec<u8>>) -> io::Result<()> {
        if index < self.next_grain || index * GRAIN_SECTORS >= self.capacity_sectors.max(1) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("grain {index} is out of order or outside the disk")));
        }
        self.next_grain = index + 1;
        while index / GTES_PER_GT > self.table {
            self.close_table()?;
        }
        let Some(packed) = packed else { return Ok(()) };
        let start = self.sector()?;
        let mut record = Vec::with_capacity(12 + packed.len());
        record.extend_from_slice(&(index * GRAIN_SECTORS).to_le_bytes());
        record.extend_from_slice(&(packed.len() as u32).to_le_bytes());
        record.extend_from_slice(&packed);
        self.write_padded(&record)?;
        self.entries[(index % GTES_PER_GT) as usize] = start;
        Ok(())
    }

    /// Writes the remaining tables, the directory, the footer and the end marker; returns the
    /// writer and the stream's length.
    pub fn finish(mut self) -> io::Result<(W, u64)> {
        let tables = self.capacity_sectors.div_ceil(GRAIN_SECTORS).div_ceil(GTES_PER_GT).max(1);
        while self.table < tables {
            self.close_table()?;
        }
        let gd_bytes: Vec<u8> = self.directory.iter().flat_map(|e| e.to_le_bytes()).collect();
        self.write_padded(&marker((gd_bytes.len() as u64).div_ceil(SECTOR), MARKER_GD))?;
        let gd_offset = self.sector()? as u64;
        self.write_padded(&gd_bytes)?;
        self.write_padded(&marker(1, MARKER_FOOTER))?;
        self.write_padded(&header(self.capacity_sectors, self.descriptor_sectors, gd_offset))?;
        self.write_padded(&marker(0, MARKER_EOS))?;
        self.out.flush()?;
        Ok((self.out, self.at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// Writes `disk` grain by grain and has qemu-img (not our code) read it back.
    fn round_trip(disk: &[u8]) {
        let dir = tempfile::tempdir().unwrap();
        let vmdk = dir.path().join("d.vmdk");
        let mut w = StreamVmdk::new(std::fs::File::create(&vmdk).unwrap(), disk.len() as u64, "d.vmdk").unwrap();
        for (i, grain) in disk.chunks(GRAIN).enumerate() {
            w.grain(i as u64, grain).unwrap();
        }
        let (_, len) = w.finish().unwrap();
        assert_eq!(std::fs::metadata(&vmdk).unwrap().len(), len);
        let raw = dir.path().join("d.raw");
        std::fs::write(&raw, disk).unwrap();
        let check = Command::new("qemu-img").args(["check", "-f", "vmdk"]).arg(&vmdk).output().expect("qemu-img runs");
        assert!(check.status.success(), "qemu-img check: {}", String::from_utf8_lossy(&check.stdout));
        let compare = Command::new("qemu-img").args(["compare", "-f", "vmdk", "-F", "raw"]).arg(&vmdk).arg(&raw).output().unwrap();
        assert!(compare.status.success(), "qemu-img compare: {}", String::from_utf8_lossy(&compare.stdout));
        let info = Command::new("qemu-img").args(["info", "--output", "json"]).arg(&vmdk).output().unwrap();
        let info = String::from_utf8_lossy(&info.stdout);
        assert!(info.contains("streamOptimized"), "{info}");
    }

    #[test]
    fn qemu_img_reads_back_what_was_written() {
        // Two grain tables' worth and more (512 grains each), with zero stretches, a zero grain
        // table, and a short last grain.
        let size = 2 * 512 * GRAIN + 3 * GRAIN + 4096 + 512;
        let mut disk = vec![0u8; size];
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for (i, b) in disk.iter_mut().enumerate() {
            if (i / GRAIN) % 5 == 1 || i >= size - 3000 {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                *b = state as u8;
            }
        }
        disk[512 * GRAIN..2 * 512 * GRAIN].fill(0);
        round_trip(&disk);
        round_trip(&[0u8; 1024]);
        round_trip(&vec![7u8; GRAIN]);
    }

    #[test]
    fn the_same_disk_gives_the_same_bytes_and_order_is_enforced() {
        let write = || {
            let mut w = StreamVmdk::new(Vec::new(), 3 * GRAIN as u64, "x.vmdk").unwrap();
            w.grain(0, &vec![1u8; GRAIN]).unwrap();
            w.grain(2, &vec![2u8; GRAIN]).unwrap();
            assert!(w.grain(1, &vec![3u8; GRAIN]).is_err(), "grains must come in order");
            assert!(w.grain(3, &[1]).is_err(), "a grain past the end is refused");
            assert!(w.grain(2, &vec![1u8; GRAIN + 1]).is_err(), "a grain longer than a grain is refused");
            w.finish().unwrap().0
        };
        assert_eq!(write(), write());
    }
}
