//! `dr failover`: restores a VM from the best of several replicas — the newest point whose
//! chunks are all there and verify — falling back to an older point, or another replica, when
//! chunks are missing or corrupt, and saying what it chose and why.

use std::path::{Path, PathBuf};
use std::time::Instant;

use hyperexport_shared::keys::Secret;
use hyperexport_shared::point::RecoveryPoint;
use hyperexport_shared::{RepoError, Repository};
use serde::Serialize;

use crate::error::{AgentError, Result};
use crate::progress::Progress;
use crate::restore::{RestoreOptions, RestoreReport, restore};

/// A candidate that was not used.
#[derive(Debug, Clone, Serialize)]
pub struct Skipped {
    /// The replica folder.
    pub replica: PathBuf,
    /// The point (empty when its file could not be read).
    pub point: String,
    /// Its consistency time.
    pub time: String,
    /// Why it was passed over.
    pub reason: String,
}

/// What a failover did.
#[derive(Debug, Clone, Serialize)]
pub struct FailoverReport {
    /// The VM.
    pub vm: String,
    /// The replica restored from.
    pub replica: PathBuf,
    /// The point restored.
    pub point: String,
    /// Its consistency time.
    pub point_time: String,
    /// Newer or equal candidates passed over, in the order they were tried.
    pub skipped: Vec<Skipped>,
    /// The restore.
    pub restore: RestoreReport,
    /// Seconds from the start of the failover to a verified restore: the recovery time.
    pub rto_seconds: f64,
    /// Logical bytes restored per second over that time, in GB/s.
    pub gb_per_second: f64,
}

/// Whether a restore failed because of the data in the replica (then another candidate may
/// do), rather than the output.
fn data_fault(e: &AgentError) -> bool {
    matches!(
        e,
        AgentError::Repo(RepoError::MissingChunk(_) | RepoError::CorruptChunk { .. } | RepoError::Corrupt { .. })
            | AgentError::DiskChunk { .. }
            | AgentError::DigestMismatch { .. }
    )
}

/// Restores `vm` to `to` from the best point among `replicas` (opened repositories with their
/// folders, in order of preference when points are equally new).
pub fn failover(
    vm: &str,
    replicas: &[(PathBuf, Repository)],
    to: &Path,
    opts: &RestoreOptions,
    progress: &dyn Progress,
) -> Result<FailoverReport> {
    let started = Instant::now();
    // Attempts overwrite each other's partial output, never something that was there before.
    if to.exists() && !opts.force {
        return Err(AgentError::Invalid(format!("{} already exists; pass --force to overwrite it", to.display())));
    }
    let mut skipped = Vec::new();
    let mut candidates: Vec<(usize, RecoveryPoint)> = Vec::new();
    for (i, (folder, repo)) in replicas.iter().enumerate() {
        for point in repo.scan_points(Some(vm))? {
            match point {
                Ok(p) if p.vm == vm => candidates.push((i, p)),
                Ok(_) => {}
                Err(e) => {
                    skipped.push(Skipped { replica: folder.clone(), point: String::new(), time: String::new(), reason: e.to_string() })
                }
            }
        }
    }
    // Newest first; equally new: the replica named first.
    candidates.sort_by(|(ia, a), (ib, b)| b.time.cmp(&a.time).then(ia.cmp(ib)));
    for (i, point) in candidates {
        let (folder, repo) = &replicas[i];
        let skip = |reason: String| Skipped { replica: folder.clone(), point: point.id.clone(), time: point.time.clone(), reason };
        let missing = point.chunk_ids().iter().filter(|id| !repo.has_chunk(id)).count();
        if missing > 0 {
            skipped.push(skip(format!("{missing} chunks missing")));
            continue;
        }
        // Restore reads and checks every chunk (tag, decompression, id) and each disk's SHA-256.
        let attempt = RestoreOptions { force: true, ..opts.clone() };
        match restore(repo, &point, to, &attempt, progress) {
            Ok(report) => {
                let rto_seconds = started.elapsed().as_secs_f64();
                tracing::info!(vm, replica = %folder.display(), point = %point.id, rto_seconds, "failover restored");
                return Ok(FailoverReport {
                    vm: vm.to_string(),
                    replica: folder.clone(),
                    point: point.id.clone(),
                    point_time: point.time.clone(),
                    skipped,
                    gb_per_second: report.bytes as f64 / rto_seconds.max(1e-9) / 1e9,
                    restore: report,
                    rto_seconds,
                });
            }
            Err(e) if data_fault(&e) => {
                tracing::warn!(vm, replica = %folder.display(), point = %point.id, error = %e, "failover candidate unusable");
                skipped.push(skip(e.to_string()));
            }
            Err(e) => return Err(e),
        }
    }
    // Nothing usable: leave no partial output behind.
    if to.is_dir() {
        let _ = std::fs::remove_dir_all(to);
    } else {
        let _ = std::fs::remove_file(to);
    }
    let tried: Vec<String> = skipped.iter().map(|s| format!("{} {}: {}", s.replica.display(), s.point, s.reason)).collect();
    Err(AgentError::Invalid(format!("no usable point of VM {vm:?} in {} replicas (tried: {})", replicas.len(), tried.join("; "))))
}

/// A test failover on a replica receiver's host: restores `vm` from the replicas under
/// `replica_root` (one folder per source repository) into a fresh folder under `scratch`,
/// verified as any restore is, then deletes it. Returns what the failover did.
pub fn drill(vm: &str, replica_root: &Path, secret: Option<&Secret>, scratch: &Path, threads: usize) -> Result<FailoverReport> {
    let replicas = replicas_under(replica_root, secret)?;
    let out = scratch.join(format!("drill-{}-{}", crate::restore::file_stem(vm), std::process::id()));
    std::fs::create_dir_all(scratch).map_err(AgentError::io("create folder", scratch))?;
    let opts = RestoreOptions { format: crate::restore::RestoreFormat::Raw, force: true, threads };
    // A folder of its own: a VM with several disks restores into it, one with a single disk as a
    // file inside it.
    std::fs::create_dir_all(&out).map_err(AgentError::io("create folder", &out))?;
    let report = failover(vm, &replicas, &out.join("disk"), &opts, &crate::progress::NoProgress);
    let _ = std::fs::remove_dir_all(&out);
    report
}

/// A failover on a replica receiver's host: restores `vm` from the replicas under
/// `replica_root` to `to` (as raw images), which must not exist yet.
pub fn failover_from_root(vm: &str, replica_root: &Path, secret: Option<&Secret>, to: &Path, threads: usize) -> Result<FailoverReport> {
    let replicas = replicas_under(replica_root, secret)?;
    let opts = RestoreOptions { format: crate::restore::RestoreFormat::Raw, force: false, threads };
    failover(vm, &replicas, to, &opts, &crate::progress::NoProgress)
}

/// Every replica (a folder with a `config`) under `root`, opened with `secret`.
fn replicas_under(root: &Path, secret: Option<&Secret>) -> Result<Vec<(PathBuf, Repository)>> {
    let mut replicas = Vec::new();
    let entries = std::fs::read_dir(root).map_err(AgentError::io("list replicas", root))?;
    for entry in entries.flatten() {
        let folder = entry.path();
        if folder.join("config").is_file() {
            replicas.push((folder.clone(), Repository::open(&folder, secret)?));
        }
    }
    Ok(replicas)
}
