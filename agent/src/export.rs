//! The export pipeline: source disk → chunks → repository → recovery point.
//!
//! Per disk, a producer thread reads chunks in order (skipping ranges the file system reports as
//! holes) and feeds the whole-disk SHA-256; worker threads detect all-zero chunks, hash with keyed
//! BLAKE3, skip ids the repository already has, and compress, encrypt and store the rest. Once all
//! disks are done the repository is synced and the point is published atomically.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::bandwidth::Throttle;
use crate::buffer_pool::{BufferPool, PooledBuf};
use crate::checkpoint::{DiskCheckpoint, DiskControl, DiskResume, SavedStates, checkpoint_every};
use crate::digest::ResumableSha256;
use crate::error::{AgentError, Result};
pub use crate::faults::TestFaults;
use crate::parallel::ordered_pipeline;
use crate::progress::Progress;
use crate::source::VmSource;
use crate::source::disk::{RawDisk, is_zero};
use hyperexport_shared::chunk::ChunkId;
use hyperexport_shared::compress::Compression;
use hyperexport_shared::point::{DiskRecord, RecoveryPoint, SourceInfo};
use hyperexport_shared::repo::ExportLocks;
use hyperexport_shared::repo::now_rfc3339;
use hyperexport_shared::{RepoError, Repository, crypto};
use serde::Serialize;

/// How to export.
#[derive(Debug, Clone)]
pub struct ExportOptions {
    /// Chunk size in bytes (a power of two, 64 KiB to 16 MiB).
    pub chunk_size: u32,
    /// Compression of new chunks.
    pub compression: Compression,
    /// Worker threads for hashing, compression and encryption.
    pub threads: usize,
    /// For a repository in an object store: chunks uploaded at once. Each worker uploads the
    /// chunk it encoded, so this is the number of workers there (instead of `threads`).
    pub upload_concurrency: usize,
    /// How long to wait for another writer's lock.
    pub lock_wait: Duration,
    /// Fault injection for tests (off unless the test environment variables are set).
    pub faults: TestFaults,
    /// Bandwidth limits on reads and writes (none: as fast as it goes).
    pub throttle: Option<Throttle>,
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
    /// Bytes an earlier attempt's checkpoint covered, so not read again.
    pub resumed_bytes: u64,
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
        self.resumed_bytes += o.resumed_bytes;
    }
}

/// A finished disk: its record for the point and what its export did.
pub type DiskResult = (DiskRecord, DiskReport);

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

/// Chunks uploaded at once to an object store unless asked otherwise: enough requests in flight
/// to hide a store's latency, few enough to keep memory small (one chunk each).
pub const DEFAULT_UPLOAD_CONCURRENCY: usize = 8;

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

/// Exports `source` into `repo` as a new recovery point, in one go (the local `export` command).
pub fn export(repo: &Arc<Repository>, source: &Arc<VmSource>, opts: &ExportOptions, progress: &dyn Progress) -> Result<ExportReport> {
    let never = AtomicBool::new(false);
    let run = ExportRun::begin(Arc::clone(repo), Arc::clone(source), opts.clone(), &never)?;
    let mut disks = Vec::new();
    for index in 0..source.disks.len() {
        disks.push(run.disk(index, progress, &DiskControl { cancel: &never, resume: None, checkpoint: None })?);
    }
    run.publish(disks, progress)
}

/// How long one wait for the repository lock lasts before the cancel flag is looked at again.
const LOCK_STEP: Duration = Duration::from_millis(250);

/// An export under way: the repository locked against other writers, the previous point read.
/// Disks are exported one at a time with [`ExportRun::disk`]; [`ExportRun::publish`] then makes
/// the point visible. Dropping it without publishing leaves no point (chunks already stored are
/// found again by the next attempt).
pub struct ExportRun {
    repo: Arc<Repository>,
    source: Arc<VmSource>,
    opts: ExportOptions,
    _lock: ExportLocks,
    time: String,
    parent: Option<RecoveryPoint>,
    known: HashSet<ChunkId>,
    claimed: Mutex<HashSet<ChunkId>>,
    stored: AtomicU64,
    started: Instant,
}

impl ExportRun {
    /// Locks the repository (waiting up to the options' `lock_wait`, or until `cancel` is set)
    /// and reads the VM's previous point.
    pub fn begin(repo: Arc<Repository>, source: Arc<VmSource>, opts: ExportOptions, cancel: &AtomicBool) -> Result<Self> {
        let started = Instant::now();
        let deadline = started + opts.lock_wait;
        let purpose = format!("export of {}", source.name);
        let lock = loop {
            let step = deadline.saturating_duration_since(Instant::now()).min(LOCK_STEP);
            match repo.lock_for_export(&source.name, step, &purpose) {
                Ok(lock) => break lock,
                Err(_) if cancel.load(Ordering::Relaxed) => return Err(AgentError::Cancelled),
                Err(RepoError::Locked { .. }) if Instant::now() < deadline => continue,
                Err(e) => return Err(e.into()),
            }
        };
        // Taken once the lock is held, just before the first read: a local source has no
        // snapshot, so this is the best consistency time it has.
        let time = now_rfc3339();
        let parent = repo.latest_point_of(&source.name)?;
        let known = parent.iter().flat_map(|p| p.disks.iter()).flat_map(|d| d.chunks.iter().flatten().copied()).collect();
        Ok(ExportRun {
            repo,
            source,
            opts,
            _lock: lock,
            time,
            parent,
            known,
            claimed: Mutex::new(HashSet::new()),
            stored: AtomicU64::new(0),
            started,
        })
    }

    /// The repository it writes to.
    pub fn repo(&self) -> &Repository {
        &self.repo
    }

    /// The repository it writes to, shared (for work that outlives the export, as replication).
    pub fn repo_shared(&self) -> Arc<Repository> {
        Arc::clone(&self.repo)
    }

    /// The point's consistency time, in milliseconds since the Unix epoch.
    pub fn time_unix_ms(&self) -> i64 {
        humantime::parse_rfc3339(&self.time)
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_millis() as i64)
    }

    /// The chunk size it cuts disks with.
    pub fn chunk_size(&self) -> u32 {
        self.opts.chunk_size
    }

    /// The VM it exports.
    pub fn source(&self) -> &VmSource {
        &self.source
    }

    /// Exports disk `index` of the source.
    pub fn disk(&self, index: usize, progress: &dyn Progress, control: &DiskControl) -> Result<DiskResult> {
        let disk =
            self.source.disks.get(index).ok_or_else(|| AgentError::Invalid(format!("VM {:?} has no disk {index}", self.source.name)))?;
        let raw = RawDisk::of(disk)?;
        let ctx = DiskContext { run: self, progress, cancel: control.cancel };
        export_disk(&ctx, &disk.name, &raw, control)
    }

    /// Syncs the repository and publishes the point made of `disks` (in the source's order).
    pub fn publish(&self, disks: Vec<DiskResult>, progress: &dyn Progress) -> Result<ExportReport> {
        let (records, reports): (Vec<DiskRecord>, Vec<DiskReport>) = disks.into_iter().unzip();
        if records.len() != self.source.disks.len() {
            return Err(AgentError::Invalid(format!("{} of {} disks exported; nothing published", records.len(), self.source.disks.len())));
        }
        let found: u64 = reports.iter().map(|r| r.found_chunks).sum();
        if found > 0 {
            progress.note(&format!(
                "resumed: {found} chunks were already in the repository (an interrupted run, or another VM) and were checked, not written again"
            ));
        }
        self.repo.sync()?;
        let mut id = [0u8; 16];
        crypto::random_bytes(&mut id);
        let point = RecoveryPoint {
            id: hex::encode(id),
            vm: self.source.name.clone(),
            time: self.time.clone(),
            source: SourceInfo { kind: self.source.kind.into(), location: self.source.location.clone() },
            vm_info: self.source.info.clone(),
            ovf_descriptor: self.source.ovf_descriptor.clone(),
            parent: self.parent.as_ref().map(|p| p.id.clone()),
            disks: records,
        };
        self.repo.write_point(&point)?;
        let mut total = DiskReport::default();
        reports.iter().for_each(|r| total.add(r));
        Ok(ExportReport {
            point: point.id,
            vm: point.vm,
            parent: point.parent,
            seconds: self.started.elapsed().as_secs_f64(),
            total,
            disks: reports,
        })
    }
}

/// What every chunk of one disk's export shares.
struct DiskContext<'a> {
    run: &'a ExportRun,
    progress: &'a dyn Progress,
    cancel: &'a AtomicBool,
}

/// The chunks of `resume` if they fit this disk and are all still in the repository.
fn usable_resume(ctx: &DiskContext, name: &str, size: u64, resume: Option<&DiskResume>) -> Option<DiskResume> {
    let resume = resume?;
    let fits = resume.size == size
        && resume.chunk_size == ctx.run.opts.chunk_size
        && resume.chunks.len() as u64 <= size.div_ceil(resume.chunk_size as u64)
        && resume.chunks.iter().flatten().all(|id| ctx.run.repo.has_chunk(id));
    if !fits {
        ctx.progress.note(&format!("the checkpoint of disk {name} does not fit the disk or the repository any more; starting it over"));
        return None;
    }
    Some(resume.clone())
}

fn export_disk(ctx: &DiskContext, name: &str, raw: &RawDisk, control: &DiskControl) -> Result<DiskResult> {
    let DiskContext { run, progress, cancel } = *ctx;
    let opts = &run.opts;
    let size = raw.size();
    let chunk_size = opts.chunk_size as u64;
    let count = size.div_ceil(chunk_size);
    let threads = if run.repo.local_root().is_some() { opts.threads } else { opts.upload_concurrency }.max(1);
    let window = (READ_AHEAD_BYTES / opts.chunk_size as usize).max(threads * 2 + 2);
    let mut report = DiskReport { name: name.to_string(), size, ..Default::default() };
    let resume = usable_resume(ctx, name, size, control.resume.as_ref());
    let (mut chunks, hasher) = match &resume {
        Some(r) => {
            let done = r.chunks.len() as u64 * chunk_size;
            let hasher = ResumableSha256::resume(&r.sha256_state, done.min(size))
                .ok_or_else(|| AgentError::Invalid(format!("checkpoint of disk {name} ends inside a chunk")))?;
            (r.chunks.clone(), hasher)
        }
        None => (Vec::with_capacity(count as usize), ResumableSha256::new()),
    };
    let first = chunks.len() as u64;
    report.resumed_bytes = (first * chunk_size).min(size);
    let every = checkpoint_every(count, chunk_size);
    let saved = &SavedStates::default();
    let mut checkpointed = first;
    let mut index = first;
    let bytes_read = AtomicU64::new(0);
    let read_counter = &bytes_read;
    let pool = &BufferPool::new(window);
    progress.disk_started(name, size);
    if report.resumed_bytes > 0 {
        progress.advanced(name, report.resumed_bytes);
    }
    // The SHA-256 of the whole disk is the one computation that cannot be parallel: it gets a
    // thread of its own, fed in order by the reader, so neither waits for the other's work.
    let (hash_tx, hash_rx) = crossbeam_channel::bounded::<HashInput>(window);
    let produce = move || -> Result<Option<Item>> {
        if index == count {
            return Ok(None);
        }
        if cancel.load(Ordering::Relaxed) {
            return Err(AgentError::Cancelled);
        }
        let offset = index * chunk_size;
        let len = (size - offset).min(chunk_size);
        index += 1;
        if !raw.may_have_data(offset, len) {
            let _ = hash_tx.send(HashInput::Zeros(len));
            return Ok(Some(Item::Hole(len)));
        }
        if let Some(throttle) = &opts.throttle
            && !throttle.read_blocking(len, cancel)
        {
            return Err(AgentError::Cancelled);
        }
        let mut buf = pool.take(len as usize);
        raw.read_at(offset, buf.as_mut_slice())?;
        read_counter.fetch_add(len, Ordering::Relaxed);
        progress.read(len);
        let buf = Arc::new(buf);
        let _ = hash_tx.send(HashInput::Data(Arc::clone(&buf)));
        Ok(Some(Item::Data(buf)))
    };
    let work = |item: Item| -> Result<(u64, Outcome)> {
        let data = match item {
            Item::Hole(len) => return Ok((len, Outcome::Hole)),
            Item::Data(d) => d,
        };
        if cancel.load(Ordering::Relaxed) {
            return Err(AgentError::Cancelled);
        }
        Ok((data.len() as u64, store_if_new(ctx, &data)?))
    };
    let consume = |(len, outcome): (u64, Outcome)| -> Result<()> {
        chunks.push(report.count(len, outcome));
        progress.advanced(name, len);
        let done = chunks.len() as u64;
        if let Some(sink) = control.checkpoint
            && done.is_multiple_of(every)
            && let Some((end, state)) = saved.latest_until(done)
            && end > checkpointed
        {
            run.repo.sync()?;
            let chunks = chunks[checkpointed as usize..end as usize].to_vec();
            sink(DiskCheckpoint { start_chunk: checkpointed, chunks, sha256_state: state, sha256: None });
            checkpointed = end;
        }
        Ok(())
    };
    let digest = std::thread::scope(|s| {
        let hasher = s.spawn(move || hash_in_order(hasher, hash_rx, first, every, saved));
        let result = ordered_pipeline(threads, window, produce, work, consume);
        let digest = hasher.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        result.map(|()| digest)
    })?;
    if let Some(sink) = control.checkpoint {
        run.repo.sync()?;
        let rest = chunks[checkpointed as usize..].to_vec();
        sink(DiskCheckpoint { start_chunk: checkpointed, chunks: rest, sha256_state: [0; 32], sha256: Some(digest.clone()) });
    }
    progress.disk_finished(name);
    report.bytes_read = bytes_read.into_inner();
    report.sha256 = digest;
    let record = DiskRecord { name: name.to_string(), size, chunk_size: opts.chunk_size, sha256: report.sha256.clone(), chunks };
    Ok((record, report))
}

impl DiskReport {
    /// Counts one chunk's outcome; returns its id for the point (`None`: a hole).
    fn count(&mut self, len: u64, outcome: Outcome) -> Option<ChunkId> {
        match outcome {
            Outcome::Hole => {
                self.hole_bytes += len;
                None
            }
            Outcome::New(id, stored, repaired) => {
                self.new_chunks += 1;
                self.repaired_chunks += repaired as u64;
                self.new_bytes += len;
                self.stored_bytes += stored;
                Some(id)
            }
            Outcome::Reused(id) => {
                self.reused_chunks += 1;
                self.reused_bytes += len;
                Some(id)
            }
            Outcome::Found(id) => {
                self.found_chunks += 1;
                self.found_bytes += len;
                Some(id)
            }
        }
    }
}

/// What the hashing thread receives, in disk order.
enum HashInput<'a> {
    /// A chunk's data (shared with the worker storing it).
    Data(Arc<PooledBuf<'a>>),
    /// This many zero bytes (a hole).
    Zeros(u64),
}

/// Hashes a disk's chunks in order, from chunk `first` on, until the reader hangs up; saves the
/// state every `every` chunks. Returns the SHA-256 in hex.
fn hash_in_order(
    mut sha: ResumableSha256,
    input: crossbeam_channel::Receiver<HashInput>,
    first: u64,
    every: u64,
    saved: &SavedStates,
) -> String {
    let _ends = saved.ends_on_drop();
    let zeros = vec![0u8; 1 << 20];
    let mut index = first;
    for message in input {
        match message {
            HashInput::Data(data) => sha.update(&data),
            HashInput::Zeros(mut left) => {
                while left > 0 {
                    let n = left.min(zeros.len() as u64) as usize;
                    sha.update(&zeros[..n]);
                    left -= n as u64;
                }
            }
        }
        index += 1;
        if index.is_multiple_of(every) {
            saved.hashed(index, sha.save());
        }
    }
    hex::encode(sha.finalize())
}

/// Decides what to do with one chunk of data and does it: a hole, a chunk the previous point or
/// this export already has, one found intact in the repository, or a new one stored now.
fn store_if_new(ctx: &DiskContext, data: &[u8]) -> Result<Outcome> {
    let ExportRun { repo, opts, known, claimed, stored, .. } = ctx.run;
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
    opts.faults.before_store(stored, ctx.cancel)?;
    let stored = repo.store_chunk(opts.compression, &id, data)?;
    // Counted once written (its size is known only then): the next write waits for it.
    if let Some(throttle) = &opts.throttle
        && !throttle.upload_blocking(stored, ctx.cancel)
    {
        return Err(AgentError::Cancelled);
    }
    Ok(Outcome::New(id, stored, damaged))
}
