//! `verify --repair`: replaces missing or corrupt chunks by copies from replicas of the same
//! repository, in another folder or behind another region's replica receiver.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use hyperexport_shared::lock::LockMode;
use hyperexport_shared::point::RecoveryPoint;
use hyperexport_shared::{ChunkId, Repository};
use serde::Serialize;

use crate::error::{AgentError, Result};
use crate::replication::fetch::fetch;
use crate::replication::tls::NodeTls;
use crate::verify::ChunkProblem;

/// Where copies may come from.
#[derive(Debug, Clone)]
pub enum RepairSource {
    /// A replica (or the source) of the repository in a local folder.
    Folder(PathBuf),
    /// A replica receiver (QUIC), whose certificate carries `server_name`.
    Receiver {
        /// Its UDP address.
        addr: SocketAddr,
        /// The name its certificate must carry.
        server_name: String,
    },
}

impl std::fmt::Display for RepairSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RepairSource::Folder(path) => write!(f, "{}", path.display()),
            RepairSource::Receiver { addr, .. } => write!(f, "quic://{addr}"),
        }
    }
}

/// What a repair did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RepairReport {
    /// Chunk ids replaced, each with the source it came from.
    pub repaired: BTreeMap<String, String>,
    /// Chunk ids no source had a good copy of.
    pub unrepaired: Vec<String>,
    /// Sources that failed, with why (a source that failed does not stop the others).
    pub source_errors: Vec<String>,
}

/// Replaces the chunks of `problems` (found in `point`) by good copies from `sources`, tried in
/// order. A copy is used only if it decodes with this repository's key to the expected bytes.
pub fn repair(
    repo: &Repository,
    point: &RecoveryPoint,
    problems: &[ChunkProblem],
    sources: &[RepairSource],
    tls: Option<&NodeTls>,
) -> Result<RepairReport> {
    // Shared, as exports take it: replacing a blob by an identical good one races with nobody.
    let _lock = repo.lock(LockMode::Shared, Duration::from_secs(60), "repair")?;
    // Each bad chunk once, with its plaintext length.
    let mut wanted: BTreeMap<ChunkId, usize> = BTreeMap::new();
    for p in problems {
        let disk = point
            .disks
            .iter()
            .find(|d| d.name == p.disk)
            .ok_or_else(|| AgentError::Invalid(format!("no disk {:?} in point {}", p.disk, point.id)))?;
        let id: ChunkId = p.chunk.parse().map_err(AgentError::Invalid)?;
        wanted.insert(id, disk.chunk_len(p.index as usize));
    }
    let mut report = RepairReport::default();
    for source in sources {
        if wanted.is_empty() {
            break;
        }
        let ids: Vec<ChunkId> = wanted.keys().copied().collect();
        let copies = match copies_from(repo, source, &ids, tls) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(source = %source, error = %e, "repair source failed");
                report.source_errors.push(format!("{source}: {e}"));
                continue;
            }
        };
        for (id, blob) in copies {
            let Some(&len) = wanted.get(&id) else { continue };
            match repo.put_blob(&id, blob, len) {
                Ok(()) => {
                    tracing::info!(chunk = %id, source = %source, "chunk repaired");
                    wanted.remove(&id);
                    report.repaired.insert(id.to_hex(), source.to_string());
                }
                Err(e) => report.source_errors.push(format!("{source}: chunk {id}: {e}")),
            }
        }
    }
    repo.sync()?;
    report.unrepaired = wanted.keys().map(ChunkId::to_hex).collect();
    Ok(report)
}

/// The blobs `source` has of `ids`.
fn copies_from(repo: &Repository, source: &RepairSource, ids: &[ChunkId], tls: Option<&NodeTls>) -> Result<Vec<(ChunkId, Vec<u8>)>> {
    match source {
        RepairSource::Folder(root) => {
            let other = hyperexport_shared::replica::ReplicaStore::at(root.clone());
            let mut out = Vec::new();
            for id in ids {
                if let Some(blob) = other.load_blob(id)? {
                    out.push((*id, blob));
                }
            }
            Ok(out)
        }
        RepairSource::Receiver { addr, server_name } => {
            let tls = tls.ok_or_else(|| AgentError::Invalid(format!("repairing from quic://{addr} needs --tls")))?;
            let files = repo.repo_files()?;
            let runtime =
                tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(AgentError::io("start a runtime", "repair"))?;
            let found = runtime
                .block_on(fetch(*addr, server_name, tls, &files, ids))
                .map_err(|e| AgentError::Invalid(format!("fetching from quic://{addr}: {e}")))?;
            Ok(found.into_iter().collect())
        }
    }
}
