//! The export pipeline: source disk → chunks → repository → recovery point.
//!
//! Per disk, a producer thread reads chunks in order (skipping ranges the file system reports as
//! holes) and feeds the whole-disk SHA-256; worker threads detect all-zero chunks, hash with keyed
//! BLAKE3, skip ids the repository already has, and compress, encrypt and store the rest. Once all
//! disks are done the repository is synced and the point is published atomically.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyperexport_shared::chunk::ChunkId;
use hyperexport_shared::compress::Compression;
use hyperexport_shared::lock::LockMode;
use hyperexport_shared::point::{DiskRecord, RecoveryPoint, SourceInfo};
use hyperexport_shared::repo::now_rfc3339;
use hyperexport_shared::{RepoError, Repository, crypto};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::buffer_pool::{BufferPool, PooledBuf};
use crate::error::Result;
use crate::parallel::ordered_pipeline;
use crate::progress::Progress;
use crate::source::VmSource;
use crate::source::disk::{RawDisk, is_zero};

/// How to export.
#[derive(Debug, Clone)]
pub struct ExportOptions {
    /// Chunk size in bytes (a power of two, 64 KiB to 16 MiB).
    pub chunk_size: u32,
    /// Compression of new chunks.
    pub compression: Compression,
    /// Worker threads for hashing, compression and encryption.
    pub threads: usize,
    /// How long to wait for another writer's lock.
    pub lock_wait: Duration,
    /// Fault injection for crash tests: after this many new chunks are stored, every worker
    /// stalls forever instead of storing more, so a test can kill the process at a known point.
    pub stall_after_new_chunks: Option<u64>,
}

/// What one disk's export did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DiskReport {
    /// Disk name.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// SHA-256 of the whole disk.
    pub sha256: String,
    /// Bytes read from the source (holes the file system reports are not read).
    pub bytes_read: u64,
    /// Bytes in holes and all-zero chunks (not stored).
    pub hole_bytes: u64,
    /// Bytes of chunks stored by this export.
    pub new_bytes: u64,
    /// Bytes written to the repository for them (after compression and encryption).
    pub stored_bytes: u64,
    /// Bytes of chunks the previous point already had, or repeated within this export.
    pub reused_bytes: u64,
    /// Chunks stored by this export.
    pub new_chunks: u64,
    /// Chunks the previous point already had, or repeated within this export.
    pub reused_chunks: u64,
    /// Chunks not in the previous point but found intact in the repository (stored by an
    /// interrupted run, or by another VM's export), so not written again.
    pub found_chunks: u64,
    /// Bytes of those chunks.
    pub found_bytes: u64,
    /// Chunks found in the repository but damaged (e.g. torn by a power loss), written again.
    pub repaired_chunks: u64,
}

impl DiskReport {
    fn add(&mut self, o: &DiskReport) {
        self.size += o.size;
        self.bytes_read += o.bytes_read;
        self.hole_bytes += o.hole_bytes;
        self.new_bytes += o.new_bytes;
        self.stored_bytes += o.stored_bytes;
        self.reused_bytes += o.reused_bytes;
        self.new_chunks += o.new_chunks;
        self.reused_chunks += o.reused_chunks;
        self.found_chunks += o.found_chunks;
        self.found_bytes += o.found_bytes;
        self.repaired_chunks += o.repaired_chunks;
    }
}

/// What an export did.
#[derive(Debug, Clone, Serialize)]
pub struct ExportReport {
    /// The new point's id.
    pub point: String,
    /// VM name.
    pub vm: String,
    /// The previous point it was made incrementally from.
    pub parent: Option<String>,
    /// Wall-clock seconds.
    pub seconds: f64,
    /// Totals over all disks (`name` and `sha256` empty).
    pub total: DiskReport,
    /// Per disk.
    pub disks: Vec<DiskReport>,
}

/// How far the reader may run ahead of the slowest chunk in flight, and the memory all chunk
/// buffers of a disk may take together. The disk's SHA-256 is the one sequential computation:
/// with room to run ahead, it hashes zero and hole regions while the workers still compress data
/// before them, instead of leaving a core idle.
const READ_AHEAD_BYTES: usize = 128 << 20;

enum Item<'a> {
    /// A range the file system reports as a hole: its length.
    Hole(u64),
    /// A chunk's data (shared with the hashing thread).
    Data(Arc<PooledBuf<'a>>),
}

enum Outcome {
    Hole,
    /// Stored now; the blob's size, and whether it replaced a damaged copy.
    New(ChunkId, u64, bool),
    Reused(ChunkId),
    Found(ChunkId),
}

/// Exports `source` into `repo` as a new recovery point.
pub fn export(repo: &Repository, source: &VmSource, opts: &ExportOptions, progress: &dyn Progress) -> Result<ExportReport> {
    let started = Instant::now();
    let _lock = repo.lock(LockMode::Exclusive, opts.lock_wait, &format!("export of {}", source.name))?;
    // Taken once the lock is held, just before the first read: a local source has no snapshot,
    // so this is the best consistency time it has.
    let time = now_rfc3339();
    let parent = repo.latest_point_of(&source.name)?;
    let known: HashSet<ChunkId> = parent.iter().flat_map(|p| p.disks.iter()).flat_map(|d| d.chunks.iter().flatten().copied()).collect();
    let claimed = Mutex::new(HashSet::new());
    let stored = AtomicU64::new(0);
    let ctx = DiskContext { repo, opts, known: &known, claimed: &claimed, stored: &stored, progress };
    let mut disks = Vec::new();
    let mut reports = Vec::new();
    for disk in &source.disks {
        let raw = RawDisk::open(&disk.raw_path)?;
        let (record, report) = export_disk(&ctx, &disk.name, &raw)?;
        disks.push(record);
        reports.push(report);
    }
    let found: u64 = reports.iter().map(|r| r.found_chunks).sum();
    if found > 0 {
        progress.note(&format!(
            "resumed: {found} chunks were already in the repository (an interrupted run, or another VM) and were checked, not written again"
        ));
    }
    repo.sync()?;
    let mut id = [0u8; 16];
    crypto::random_bytes(&mut id);
    let point = RecoveryPoint {
        id: hex::encode(id),
        vm: source.name.clone(),
        time,
        source: SourceInfo { kind: source.kind.into(), location: source.location.clone() },
        vm_info: source.info.clone(),
        ovf_descriptor: source.ovf_descriptor.clone(),
        parent: parent.map(|p| p.id),
        disks,
    };
    repo.write_point(&point)?;
    let mut total = DiskReport::default();
    reports.iter().for_each(|r| total.add(r));
    Ok(ExportReport {
        point: point.id,
        vm: point.vm,
        parent: point.parent,
        seconds: started.elapsed().as_secs_f64(),
        total,
        disks: reports,
    })
}

/// What every disk of one export shares.
struct DiskContext<'a> {
    repo: &'a Repository,
    opts: &'a ExportOptions,
    /// Chunk ids of the previous point: present without checking.
    known: &'a HashSet<ChunkId>,
    /// Ids this export has already handled, so a repeated chunk is stored once.
    claimed: &'a Mutex<HashSet<ChunkId>>,
    /// New chunks stored so far (for the stall fault injection).
    stored: &'a AtomicU64,
    progress: &'a dyn Progress,
}

fn export_disk(ctx: &DiskContext, name: &str, raw: &RawDisk) -> Result<(DiskRecord, DiskReport)> {
    let DiskContext { opts, progress, .. } = *ctx;
    let size = raw.size();
    let chunk_size = opts.chunk_size as u64;
    let count = size.div_ceil(chunk_size);
    let threads = opts.threads.max(1);
    let window = (READ_AHEAD_BYTES / opts.chunk_size as usize).max(threads * 2 + 2);
    let mut report = DiskReport { name: name.to_string(), size, ..Default::default() };
    let mut chunks = Vec::with_capacity(count as usize);
    let mut index = 0u64;
    let bytes_read = AtomicU64::new(0);
    let read_counter = &bytes_read;
    let pool = &BufferPool::new(window);
    progress.disk_started(name, size);
    // The SHA-256 of the whole disk is the one computation that cannot be parallel: it gets a
    // thread of its own, fed in order by the reader, so neither waits for the other's work.
    let (hash_tx, hash_rx) = crossbeam_channel::bounded::<HashInput>(window);
    let produce = move || -> Result<Option<Item>> {
        if index == count {
            return Ok(None);
        }
        let offset = index * chunk_size;
        let len = (size - offset).min(chunk_size);
        index += 1;
        if !raw.may_have_data(offset, len) {
            let _ = hash_tx.send(HashInput::Zeros(len));
            return Ok(Some(Item::Hole(len)));
        }
        let mut buf = pool.take(len as usize);
        raw.read_at(offset, buf.as_mut_slice())?;
        read_counter.fetch_add(len, Ordering::Relaxed);
        let buf = Arc::new(buf);
        let _ = hash_tx.send(HashInput::Data(Arc::clone(&buf)));
        Ok(Some(Item::Data(buf)))
    };
    let work = |item: Item| -> Result<(u64, Outcome)> {
        let data = match item {
            Item::Hole(len) => return Ok((len, Outcome::Hole)),
            Item::Data(d) => d,
        };
        Ok((data.len() as u64, store_if_new(ctx, &data)?))
    };
    let consume = |(len, outcome): (u64, Outcome)| -> Result<()> {
        let id = match outcome {
            Outcome::Hole => {
                report.hole_bytes += len;
                None
            }
            Outcome::New(id, stored, repaired) => {
                report.new_chunks += 1;
                report.repaired_chunks += repaired as u64;
                report.new_bytes += len;
                report.stored_bytes += stored;
                Some(id)
            }
            Outcome::Reused(id) => {
                report.reused_chunks += 1;
                report.reused_bytes += len;
                Some(id)
            }
            Outcome::Found(id) => {
                report.found_chunks += 1;
                report.found_bytes += len;
                Some(id)
            }
        };
        chunks.push(id);
        progress.advanced(name, len);
        Ok(())
    };
    let digest = std::thread::scope(|s| {
        let hasher = s.spawn(|| hash_in_order(hash_rx));
        let result = ordered_pipeline(threads, window, produce, work, consume);
        let digest = hasher.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        result.map(|()| digest)
    })?;
    progress.disk_finished(name);
    report.bytes_read = bytes_read.into_inner();
    report.sha256 = digest;
    let record = DiskRecord { name: name.to_string(), size, chunk_size: opts.chunk_size, sha256: report.sha256.clone(), chunks };
    Ok((record, report))
}

/// What the hashing thread receives, in disk order.
enum HashInput<'a> {
    /// A chunk's data (shared with the worker storing it).
    Data(Arc<PooledBuf<'a>>),
    /// This many zero bytes (a hole).
    Zeros(u64),
}

/// Hashes a disk's chunks in order until the reader hangs up; returns the SHA-256 in hex.
fn hash_in_order(input: crossbeam_channel::Receiver<HashInput>) -> String {
    let zeros = vec![0u8; 1 << 20];
    let mut sha = Sha256::new();
    for message in input {
        match message {
            HashInput::Data(data) => sha.update(&**data),
            HashInput::Zeros(mut left) => {
                while left > 0 {
                    let n = left.min(zeros.len() as u64) as usize;
                    sha.update(&zeros[..n]);
                    left -= n as u64;
                }
            }
        }
    }
    hex::encode(sha.finalize())
}

/// Decides what to do with one chunk of data and does it: a hole, a chunk the previous point or
/// this export already has, one found intact in the repository, or a new one stored now.
fn store_if_new(ctx: &DiskContext, data: &[u8]) -> Result<Outcome> {
    let DiskContext { repo, opts, known, claimed, .. } = *ctx;
    if is_zero(data) {
        return Ok(Outcome::Hole);
    }
    let id = ChunkId(repo.keys().chunk_id(data));
    if known.contains(&id) || !claimed.lock().expect("claimed set lock").insert(id) {
        return Ok(Outcome::Reused(id));
    }
    // A chunk already on disk is trusted only after it decodes: a crash of the machine can
    // leave a file of the right name whose data never reached the disk.
    let damaged = match repo.load_chunk(&id, data.len()) {
        Ok(_) => return Ok(Outcome::Found(id)),
        Err(RepoError::MissingChunk(_)) => false,
        Err(RepoError::CorruptChunk { .. }) => true,
        Err(e) => return Err(e.into()),
    };
    if let Some(limit) = opts.stall_after_new_chunks
        && ctx.stored.fetch_add(1, Ordering::SeqCst) >= limit
    {
        loop {
            std::thread::park();
        }
    }
    let stored = repo.store_chunk(opts.compression, &id, data)?;
    Ok(Outcome::New(id, stored, damaged))
}
