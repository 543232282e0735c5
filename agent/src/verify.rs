//! `verify`: proves a point restorable without writing anything.
//!
//! Full mode reads every chunk (tag, decompression, id) and recomputes each disk's SHA-256;
//! quick mode only checks that every chunk is present. Every problem is reported with its disk
//! and byte offset; nothing stops at the first one.

use hyperexport_shared::lock::LockMode;
use hyperexport_shared::point::{DiskRecord, RecoveryPoint};
use hyperexport_shared::{RepoError, Repository};
use serde::Serialize;
use std::time::Duration;

use crate::error::Result;
use crate::progress::Progress;
use crate::read_back::{Depth, read_back};

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

fn verify_disk(
    repo: &Repository,
    disk: &DiskRecord,
    quick: bool,
    threads: usize,
    progress: &dyn Progress,
    report: &mut VerifyReport,
) -> Result<()> {
    let depth = if quick { Depth::Presence } else { Depth::Full };
    let no_hook = |_: usize, _: &[u8]| Ok(());
    let digest = read_back(repo, disk, depth, threads, progress, no_hook, |index, id, outcome| {
        report.chunks_checked += 1;
        let problem = match outcome {
            Ok(()) => {
                report.bytes_checked += disk.chunk_len(index) as u64;
                return Ok(());
            }
            Err(RepoError::MissingChunk(_)) => "missing".to_string(),
            Err(RepoError::CorruptChunk { reason, .. }) => format!("corrupt: {reason}"),
            Err(e) => return Err(e.into()),
        };
        report.problems.push(ChunkProblem {
            disk: disk.name.clone(),
            index: index as u64,
            offset: index as u64 * disk.chunk_size as u64,
            chunk: id.to_hex(),
            problem,
        });
        Ok(())
    })?;
    if digest.is_some_and(|actual| actual != disk.sha256) {
        report.digest_mismatches.push(disk.name.clone());
    }
    Ok(())
}
