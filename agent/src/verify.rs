//! `verify`: proves a point restorable without writing anything.
//!
//! Full mode reads every chunk (tag, decompression, id) and recomputes each disk's SHA-256;
//! quick mode only checks that every chunk is present. Every problem is reported with its disk
//! and byte offset; nothing stops at the first one.

use hyperexport_shared::chunk::ChunkId;
use hyperexport_shared::lock::LockMode;
use hyperexport_shared::point::{DiskRecord, RecoveryPoint};
use hyperexport_shared::{RepoError, Repository};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::time::Duration;

use crate::error::Result;
use crate::parallel::ordered_pipeline;
use crate::progress::Progress;

/// One missing or corrupt chunk.
#[derive(Debug, Clone, Serialize)]
pub struct ChunkProblem {
    /// Disk name.
    pub disk: String,
    /// Index of the chunk in the disk.
    pub index: u64,
    /// Byte offset of the chunk in the disk.
    pub offset: u64,
    /// Chunk id.
    pub chunk: String,
    /// "missing" or "corrupt: <reason>".
    pub problem: String,
}

/// The outcome of verifying one point.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    /// Point id.
    pub point: String,
    /// VM name.
    pub vm: String,
    /// "full" or "quick".
    pub mode: &'static str,
    /// Chunks checked (holes excluded).
    pub chunks_checked: u64,
    /// Plaintext bytes checked.
    pub bytes_checked: u64,
    /// Missing or corrupt chunks.
    pub problems: Vec<ChunkProblem>,
    /// Disks whose SHA-256 did not match (full mode, only when all their chunks read).
    pub digest_mismatches: Vec<String>,
    /// True when nothing is wrong.
    pub ok: bool,
}

/// Verifies `point` (taking a shared lock, so no writer changes the repository meanwhile).
pub fn verify(repo: &Repository, point: &RecoveryPoint, quick: bool, threads: usize, progress: &dyn Progress) -> Result<VerifyReport> {
    let _lock = repo.lock(LockMode::Shared, Duration::from_secs(60), "verify")?;
    let mut report = VerifyReport {
        point: point.id.clone(),
        vm: point.vm.clone(),
        mode: if quick { "quick" } else { "full" },
        chunks_checked: 0,
        bytes_checked: 0,
        problems: Vec::new(),
        digest_mismatches: Vec::new(),
        ok: true,
    };
    for disk in &point.disks {
        verify_disk(repo, disk, quick, threads, progress, &mut report)?;
    }
    report.ok = report.problems.is_empty() && report.digest_mismatches.is_empty();
    Ok(report)
}

/// What checking one chunk found: its index, its id (`None` for a hole), and its plaintext
/// (full mode), nothing (quick mode), or the problem.
type Checked = (usize, Option<ChunkId>, Result<Option<Vec<u8>>, String>);

fn verify_disk(
    repo: &Repository,
    disk: &DiskRecord,
    quick: bool,
    threads: usize,
    progress: &dyn Progress,
    report: &mut VerifyReport,
) -> Result<()> {
    progress.disk_started(&disk.name, disk.size);
    let mut sha = Sha256::new();
    let mut all_read = true;
    let mut next = 0usize;
    let zeros = vec![0u8; disk.chunk_size as usize];
    let produce = || -> Result<Option<(usize, Option<ChunkId>)>> {
        let item = disk.chunks.get(next).map(|c| (next, *c));
        next += 1;
        Ok(item)
    };
    let work = |(index, chunk): (usize, Option<ChunkId>)| -> Result<Checked> {
        let Some(id) = chunk else { return Ok((index, None, Ok(None))) };
        let len = disk.chunk_len(index);
        let outcome = if quick {
            if repo.has_chunk(&id) { Ok(None) } else { Err("missing".to_string()) }
        } else {
            match repo.load_chunk(&id, len) {
                Ok(data) => Ok(Some(data)),
                Err(RepoError::MissingChunk(_)) => Err("missing".into()),
                Err(RepoError::CorruptChunk { reason, .. }) => Err(format!("corrupt: {reason}")),
                Err(e) => return Err(e.into()),
            }
        };
        Ok((index, Some(id), outcome))
    };
    let consume = |(index, id, outcome): Checked| -> Result<()> {
        let len = disk.chunk_len(index);
        match (id, outcome) {
            (None, _) => sha.update(&zeros[..len]),
            (Some(_), Ok(data)) => {
                report.chunks_checked += 1;
                report.bytes_checked += len as u64;
                if let Some(d) = data {
                    sha.update(&d);
                }
            }
            (Some(id), Err(problem)) => {
                all_read = false;
                report.chunks_checked += 1;
                report.problems.push(ChunkProblem {
                    disk: disk.name.clone(),
                    index: index as u64,
                    offset: index as u64 * disk.chunk_size as u64,
                    chunk: id.to_hex(),
                    problem,
                });
            }
        }
        progress.advanced(&disk.name, len as u64);
        Ok(())
    };
    ordered_pipeline(threads.max(1), threads.max(1) * 2 + 2, produce, work, consume)?;
    progress.disk_finished(&disk.name);
    if !quick && all_read {
        let actual = hex::encode(sha.finalize());
        if actual != disk.sha256 {
            report.digest_mismatches.push(disk.name.clone());
        }
    }
    Ok(())
}
