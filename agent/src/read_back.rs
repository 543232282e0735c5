//! Reading a point's disk back, chunk by chunk: the one pipeline under `verify` and `restore`.
//!
//! Workers load (authenticate, decompress, re-hash) each stored chunk, or only check it is there;
//! a caller hook sees each loaded chunk on the worker (restore writes it there); results come back
//! in disk order, where the disk's SHA-256 is recomputed (zeros for holes).

use hyperexport_shared::chunk::ChunkId;
use hyperexport_shared::point::DiskRecord;
use hyperexport_shared::{RepoError, Repository};
use sha2::{Digest, Sha256};

use crate::error::Result;
use crate::parallel::ordered_pipeline;
use crate::progress::Progress;

/// How much of each chunk to check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Depth {
    /// Only that the chunk is present.
    Presence,
    /// Load it fully (tag, decompression, id) and recompute the disk's SHA-256.
    Full,
}

/// Reads `disk` back. `on_loaded(index, data)` runs on a worker for each loaded chunk (full depth);
/// `on_result(index, id, outcome)` runs in disk order for each stored chunk, with the chunk's
/// missing/corrupt error if it could not be read; an error from either hook stops the read.
/// Returns the disk's recomputed SHA-256 (hex) when every chunk was loaded, else `None`.
pub fn read_back<L, R>(
    repo: &Repository,
    disk: &DiskRecord,
    depth: Depth,
    threads: usize,
    progress: &dyn Progress,
    on_loaded: L,
    mut on_result: R,
) -> Result<Option<String>>
where
    L: Fn(usize, &[u8]) -> Result<()> + Sync,
    R: FnMut(usize, ChunkId, std::result::Result<(), RepoError>) -> Result<()>,
{
    progress.disk_started(&disk.name, disk.size);
    let mut sha = Sha256::new();
    let mut complete = depth == Depth::Full;
    let zeros = vec![0u8; disk.chunk_size as usize];
    let mut next = 0usize;
    let produce = || -> Result<Option<usize>> {
        let item = (next < disk.chunks.len()).then_some(next);
        next += 1;
        Ok(item)
    };
    type Read = (usize, std::result::Result<Option<Vec<u8>>, RepoError>);
    let work = |index: usize| -> Result<Read> {
        let Some(id) = disk.chunks[index] else { return Ok((index, Ok(None))) };
        let outcome = match depth {
            Depth::Presence if repo.has_chunk(&id) => Ok(None),
            Depth::Presence => Err(RepoError::MissingChunk(id.to_hex())),
            Depth::Full => repo.load_chunk(&id, disk.chunk_len(index)).map(Some),
        };
        if let Ok(Some(data)) = &outcome {
            on_loaded(index, data)?;
        }
        Ok((index, outcome))
    };
    let consume = |(index, outcome): Read| -> Result<()> {
        let len = disk.chunk_len(index);
        match (disk.chunks[index], outcome) {
            (None, _) => sha.update(&zeros[..len]),
            (Some(id), Ok(data)) => {
                if let Some(data) = data {
                    sha.update(&data);
                }
                on_result(index, id, Ok(()))?;
            }
            (Some(id), Err(e)) => {
                complete = false;
                on_result(index, id, Err(e))?;
            }
        }
        progress.advanced(&disk.name, len as u64);
        Ok(())
    };
    ordered_pipeline(threads.max(1), threads.max(1) * 2 + 2, produce, work, consume)?;
    progress.disk_finished(&disk.name);
    Ok(complete.then(|| hex::encode(sha.finalize())))
}
