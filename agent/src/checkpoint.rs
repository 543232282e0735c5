//! Checkpoints of a running export: which chunks of a disk are durable in the repository, with
//! the disk's SHA-256 state at the same place, so that a later attempt (on this agent or another)
//! goes on from there instead of reading the disk from the start.

use std::sync::Mutex;
use std::sync::atomic::AtomicBool;

use hyperexport_shared::chunk::ChunkId;

use crate::digest::STATE_LEN;

/// Most bytes between two checkpoints of a disk.
pub const MAX_CHECKPOINT_BYTES: u64 = 256 << 20;
/// Checkpoints per disk at least (one each twentieth of the disk, unless that is more than
/// [`MAX_CHECKPOINT_BYTES`]).
pub const CHECKPOINTS_PER_DISK: u64 = 20;

/// Chunks between two checkpoints of a disk of `count` chunks of `chunk_size` bytes.
pub fn checkpoint_every(count: u64, chunk_size: u64) -> u64 {
    (count / CHECKPOINTS_PER_DISK).clamp(1, (MAX_CHECKPOINT_BYTES / chunk_size).max(1))
}

/// Where a disk's export resumes: the chunks made durable by an earlier attempt (`None`: a hole
/// or all-zero chunk) and the SHA-256 state after them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskResume {
    /// The disk's size when the checkpoint was taken.
    pub size: u64,
    /// The chunk size it was cut with.
    pub chunk_size: u32,
    /// Chunks from the disk's start.
    pub chunks: Vec<Option<ChunkId>>,
    /// SHA-256 chaining state after those chunks.
    pub sha256_state: [u8; STATE_LEN],
}

/// News of durable progress on a disk: chunks from `start_chunk` on, and the SHA-256 state after
/// the last of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskCheckpoint {
    /// Index of the first chunk in `chunks`.
    pub start_chunk: u64,
    /// The chunks made durable since the previous checkpoint.
    pub chunks: Vec<Option<ChunkId>>,
    /// SHA-256 chaining state after them (meaningless once `sha256` is set).
    pub sha256_state: [u8; STATE_LEN],
    /// The disk's SHA-256 in hex, when this checkpoint completes it.
    pub sha256: Option<String>,
}

/// What a caller controls of a disk's export.
pub struct DiskControl<'a> {
    /// Set to stop the export; it ends with [`crate::AgentError::Cancelled`].
    pub cancel: &'a AtomicBool,
    /// Where to go on from, if an earlier attempt got somewhere.
    pub resume: Option<DiskResume>,
    /// Called (on the export's consumer thread) after the repository is synced, with what is now
    /// durable; `None`: no checkpoints (and no syncs until the end).
    pub checkpoint: Option<&'a (dyn Fn(DiskCheckpoint) + Sync)>,
}

/// Chunk ids as checkpoints carry them: 32 bytes each, all zero for a hole.
pub fn encode_chunks(chunks: &[Option<ChunkId>]) -> Vec<u8> {
    chunks.iter().flat_map(|c| c.map(|id| id.0).unwrap_or([0; 32])).collect()
}

/// The inverse of [`encode_chunks`]; `None` if the length is not a multiple of 32.
pub fn decode_chunks(bytes: &[u8]) -> Option<Vec<Option<ChunkId>>> {
    if !bytes.len().is_multiple_of(32) {
        return None;
    }
    Some(
        bytes
            .chunks_exact(32)
            .map(|b| {
                let id: [u8; 32] = b.try_into().expect("32 bytes");
                (id != [0; 32]).then_some(ChunkId(id))
            })
            .collect(),
    )
}

/// SHA-256 states the hashing thread saved at chunk boundaries, for the consumer to pair with the
/// chunks it has seen stored.
#[derive(Default)]
pub(crate) struct SavedStates {
    states: Mutex<Vec<(u64, [u8; STATE_LEN])>>,
}

impl SavedStates {
    /// Records the state after chunk `end` (exclusive index).
    pub(crate) fn push(&self, end: u64, state: [u8; STATE_LEN]) {
        self.states.lock().expect("saved states lock").push((end, state));
    }

    /// The latest state at or before chunk `end` (exclusive), dropping older ones.
    pub(crate) fn latest_until(&self, end: u64) -> Option<(u64, [u8; STATE_LEN])> {
        let mut states = self.states.lock().expect("saved states lock");
        let usable = states.iter().rposition(|(at, _)| *at <= end)?;
        let found = states[usable];
        states.drain(..=usable);
        Some(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_lists_round_trip() {
        let chunks = vec![Some(ChunkId([7; 32])), None, Some(ChunkId([1; 32]))];
        assert_eq!(decode_chunks(&encode_chunks(&chunks)), Some(chunks));
        assert_eq!(decode_chunks(&[0; 33]), None);
    }

    #[test]
    fn intervals_are_bounded() {
        assert_eq!(checkpoint_every(1, 1 << 20), 1);
        assert_eq!(checkpoint_every(100, 1 << 20), 5);
        assert_eq!(checkpoint_every(1 << 20, 1 << 20), 256, "a huge disk checkpoints every 256 MiB");
        assert_eq!(checkpoint_every(10, 1 << 30), 1);
    }

    #[test]
    fn the_latest_usable_state_is_taken() {
        let saved = SavedStates::default();
        assert_eq!(saved.latest_until(10), None);
        saved.push(5, [1; 32]);
        saved.push(10, [2; 32]);
        saved.push(15, [3; 32]);
        assert_eq!(saved.latest_until(12), Some((10, [2; 32])));
        assert_eq!(saved.latest_until(12), None, "older states are dropped once used");
        assert_eq!(saved.latest_until(20), Some((15, [3; 32])));
    }
}
