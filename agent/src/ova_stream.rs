//! An OVA written front to back straight from the repository: no temp files, no `qemu-img`.
//!
//! An OVA is a tar of the `.ovf`, the `.mf`, then the disks, and both the descriptor (file sizes)
//! and the manifest (SHA-256 of every file) come before the disks they describe. So each disk is
//! produced twice: once into a counter that only measures the streamOptimized VMDK's length and
//! SHA-256, then into the archive. The VMDK writer is deterministic, so both passes give the same
//! bytes; the second is checked against the first anyway. Chunks are loaded (authenticated,
//! decompressed, re-hashed) and grains deflated on worker threads; the VMDK is written in order.

use std::io::{self, Write};

use hyperexport_shared::Repository;
use hyperexport_shared::ovf::{self, OutputDisk};
use hyperexport_shared::point::{DiskRecord, RecoveryPoint};
use sha2::{Digest, Sha256};

use crate::error::{AgentError, Result};
use crate::ova;
use crate::parallel::ordered_pipeline;
use crate::progress::Progress;
use crate::restore::file_stem;
use crate::vmdk_stream::{GRAIN, StreamVmdk, pack};

/// A writer that only counts and hashes what goes through it (and passes it on to `inner`).
pub struct Measured<W> {
    inner: W,
    len: u64,
    sha: Sha256,
}

impl<W: Write> Measured<W> {
    /// Measures what is written to `inner`.
    pub fn new(inner: W) -> Self {
        Measured { inner, len: 0, sha: Sha256::new() }
    }

    /// The writer, the byte count and the SHA-256 (hex).
    pub fn finish(self) -> (W, u64, String) {
        (self.inner, self.len, hex::encode(self.sha.finalize()))
    }
}

impl<W: Write> Write for Measured<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.len += n as u64;
        self.sha.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Writes `disk` of the repository as a streamOptimized VMDK named `name` to `out`; checks the
/// disk's SHA-256 against the point. Returns the writer and the VMDK's length and SHA-256.
pub fn write_vmdk<W: Write + Send>(
    repo: &Repository,
    disk: &DiskRecord,
    name: &str,
    threads: usize,
    progress: &dyn Progress,
    out: W,
) -> Result<(W, u64, String)> {
    let io_err = |e: io::Error| AgentError::Invalid(format!("writing {name}: {e}"));
    let mut vmdk = StreamVmdk::new(Measured::new(out), disk.size, name).map_err(io_err)?;
    let mut disk_sha = Sha256::new();
    let zeros = vec![0u8; disk.chunk_size as usize];
    progress.disk_started(&disk.name, disk.size);
    let mut next = 0usize;
    let produce = || -> Result<Option<usize>> {
        let item = (next < disk.chunks.len()).then_some(next);
        next += 1;
        Ok(item)
    };
    // Each chunk: its bytes (for the disk's digest) and its packed grains.
    type Packed = (usize, Option<Vec<u8>>, Vec<Option<Vec<u8>>>);
    let work = |index: usize| -> Result<Packed> {
        let Some(id) = disk.chunks[index] else { return Ok((index, None, Vec::new())) };
        let data = repo.load_chunk(&id, disk.chunk_len(index)).map_err(|source| AgentError::DiskChunk {
            disk: disk.name.clone(),
            offset: index as u64 * disk.chunk_size as u64,
            source,
        })?;
        let grains = data.chunks(GRAIN).map(pack).collect();
        Ok((index, Some(data), grains))
    };
    let grains_per_chunk = (disk.chunk_size as usize).div_ceil(GRAIN) as u64;
    let consume = |(index, data, grains): Packed| -> Result<()> {
        let len = disk.chunk_len(index);
        disk_sha.update(data.as_deref().unwrap_or(&zeros[..len]));
        let first = index as u64 * grains_per_chunk;
        for (i, grain) in grains.into_iter().enumerate() {
            vmdk.packed_grain(first + i as u64, grain).map_err(io_err)?;
        }
        progress.advanced(&disk.name, len as u64);
        Ok(())
    };
    ordered_pipeline(threads.max(1), threads.max(1) * 2 + 2, produce, work, consume)?;
    progress.disk_finished(&disk.name);
    let actual = hex::encode(disk_sha.finalize());
    if actual != disk.sha256 {
        return Err(AgentError::DigestMismatch { disk: disk.name.clone(), expected: disk.sha256.clone(), actual });
    }
    let (measured, _) = vmdk.finish().map_err(io_err)?;
    Ok(measured.finish())
}

/// The file names of a point's disks in an OVF folder or OVA: `<vm>-disk<N>.vmdk`.
pub fn disk_names(point: &RecoveryPoint) -> Vec<String> {
    let stem = file_stem(&point.vm);
    (1..=point.disks.len()).map(|i| format!("{stem}-disk{i}.vmdk")).collect()
}

/// The file names of a point's descriptor and manifest: `<vm>.ovf` and `<vm>.mf`.
pub fn descriptor_names(point: &RecoveryPoint) -> (String, String) {
    let stem = file_stem(&point.vm);
    (format!("{stem}.ovf"), format!("{stem}.mf"))
}

/// The descriptor and manifest of an OVF folder or OVA, with their file names.
pub struct Described {
    /// `<vm>.ovf`.
    pub ovf_name: String,
    /// The OVF descriptor.
    pub descriptor: String,
    /// `<vm>.mf`.
    pub mf_name: String,
    /// `SHA256(<file>)= <hex>` for the descriptor and each disk file.
    pub manifest: String,
}

/// Describes the disks `names` of `point`, whose VMDK files have the lengths and SHA-256s of
/// `measured`.
pub fn describe(point: &RecoveryPoint, names: &[String], measured: &[(u64, String)]) -> Described {
    let disks: Vec<OutputDisk> = point
        .disks
        .iter()
        .zip(names)
        .zip(measured)
        .map(|((disk, name), (len, _))| OutputDisk {
            file_name: name.clone(),
            file_size: *len,
            capacity: disk.size,
            format: ovf::VMDK_STREAM_OPTIMIZED,
        })
        .collect();
    let descriptor = ovf::generate(&point.vm, &point.vm_info, &disks);
    let (ovf_name, mf_name) = descriptor_names(point);
    let mut manifest = format!("SHA256({ovf_name})= {}\n", hex::encode(Sha256::digest(descriptor.as_bytes())));
    for (name, (_, sha)) in names.iter().zip(measured) {
        manifest.push_str(&format!("SHA256({name})= {sha}\n"));
    }
    Described { ovf_name, descriptor, mf_name, manifest }
}

/// The bytes a file of `len` bytes takes in the archive (header and padding).
fn in_archive(len: u64) -> u64 {
    512 + len.div_ceil(512) * 512
}

/// Writes the OVA of `point`: descriptor, manifest, one streamOptimized VMDK per disk, to the
/// writer `open` returns when given the archive's exact length. Returns the writer.
pub fn write_ova<W: Write + Send>(
    repo: &Repository,
    point: &RecoveryPoint,
    threads: usize,
    progress: &dyn Progress,
    open: impl FnOnce(u64) -> Result<W>,
) -> Result<W> {
    let names = disk_names(point);
    // Pass 1: what each VMDK will be.
    let mut measured = Vec::new();
    for (disk, name) in point.disks.iter().zip(&names) {
        let (_, len, sha) = write_vmdk(repo, disk, name, threads, progress, io::sink())?;
        measured.push((len, sha));
    }
    let Described { ovf_name, descriptor, mf_name, manifest } = describe(point, &names, &measured);
    // Pass 2: the archive.
    let total = in_archive(descriptor.len() as u64)
        + in_archive(manifest.len() as u64)
        + measured.iter().map(|(len, _)| in_archive(*len)).sum::<u64>()
        + 1024;
    let mut tar = ova::Archive::new(open(total)?);
    tar.file(&ovf_name, descriptor.as_bytes())?;
    tar.file(&mf_name, manifest.as_bytes())?;
    for ((disk, name), (len, sha)) in point.disks.iter().zip(&names).zip(&measured) {
        let body = tar.begin(name, *len)?;
        let (_, written, again) = write_vmdk(repo, disk, name, threads, progress, body)?;
        if written != *len || again != *sha {
            return Err(AgentError::Invalid(format!("{name} came out different on its second pass ({written} bytes, SHA-256 {again})")));
        }
        tar.end_file(written)?;
    }
    tar.finish()
}
