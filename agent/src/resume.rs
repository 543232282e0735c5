//! Turning the checkpoint the coordinator sends with an assignment into a plan: disks already
//! complete in the target, and disks to go on with from a chunk boundary. Whatever does not fit
//! the disk as it is now (another size, another chunk size, chunks gone from the target) is
//! dropped, and that disk is exported from its start.

use hyperexport_proto::v1::{DiskCheckpoint, TaskCheckpointState};
use hyperexport_shared::point::DiskRecord;

use crate::checkpoint::{DiskResume, decode_chunks};
use crate::digest::STATE_LEN;
use crate::export::{DiskReport, DiskResult, ExportRun};

/// Per disk of the VM: where to resume it, or its finished result.
#[derive(Default)]
pub struct ResumePlan {
    /// Disks to go on with from their checkpoint.
    pub partial: Vec<Option<DiskResume>>,
    /// Disks the checkpoint says are complete (and whose chunks the target holds).
    pub complete: Vec<Option<DiskResult>>,
}

/// The plan for `run`'s disks (of `sizes` bytes) from a task's checkpoint.
pub fn plan_resume(run: &ExportRun, sizes: &[u64], state: Option<&TaskCheckpointState>) -> ResumePlan {
    let disks = &run.source().disks;
    let mut plan = ResumePlan { partial: vec![None; disks.len()], complete: vec![None; disks.len()] };
    for d in state.map(|s| s.disks.as_slice()).unwrap_or_default() {
        let index = d.index as usize;
        let Some(size) = sizes.get(index).copied() else { continue };
        match usable(run, d, &disks[index].name, size) {
            Some(Usable::Complete(result)) => plan.complete[index] = Some(*result),
            Some(Usable::Partial(resume)) => plan.partial[index] = Some(resume),
            None => tracing::warn!(disk = %d.name, "checkpoint does not fit the disk or the target; exporting the disk from its start"),
        }
    }
    plan
}

enum Usable {
    Complete(Box<DiskResult>),
    Partial(DiskResume),
}

fn usable(run: &ExportRun, d: &DiskCheckpoint, name: &str, size: u64) -> Option<Usable> {
    let chunk_size = run.chunk_size();
    if d.name != name || d.size != size || d.chunk_size != chunk_size || d.start_chunk != 0 {
        return None;
    }
    let chunks = decode_chunks(&d.chunk_ids)?;
    let count = size.div_ceil(chunk_size as u64);
    if chunks.len() as u64 > count {
        return None;
    }
    if d.sha256.is_empty() {
        let sha256_state: [u8; STATE_LEN] = d.sha256_state.as_slice().try_into().ok()?;
        return Some(Usable::Partial(DiskResume { size, chunk_size, chunks, sha256_state }));
    }
    if chunks.len() as u64 != count || !chunks.iter().flatten().all(|id| run.repo().has_chunk(id)) {
        return None;
    }
    let report = DiskReport { name: name.to_string(), size, sha256: d.sha256.clone(), resumed_bytes: size, ..Default::default() };
    let record = DiskRecord { name: name.to_string(), size, chunk_size, sha256: d.sha256.clone(), chunks };
    Some(Usable::Complete(Box::new((record, report))))
}
