//! Checkpoints of a running export: which chunks of a disk are durable in the repository, with
//! the disk's SHA-256 state at the same place, so that a later attempt (on this agent or another)
//! goes on from there instead of reading the disk from the start.

use std::sync::atomic::AtomicBool;
use std::sync::{Condvar, Mutex};

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
    hashed: Mutex<Hashed>,
    moved: Condvar,
}

/// How far the hashing thread got.
#[derive(Default)]
struct Hashed {
    /// Chunks hashed (exclusive index).
    upto: u64,
    /// The hashing thread has ended (its input closed, or it panicked).
    ended: bool,
    /// States saved at chunk boundaries, oldest first.
    states: Vec<(u64, [u8; STATE_LEN])>,
}

impl SavedStates {
    fn lock(&self) -> std::sync::MutexGuard<'_, Hashed> {
        self.hashed.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records that chunks up to `end` (exclusive) are hashed, with the state there if it could
    /// be saved.
    pub(crate) fn hashed(&self, end: u64, state: Option<[u8; STATE_LEN]>) {
        let mut hashed = self.lock();
        hashed.upto = end;
        if let Some(state) = state {
            hashed.states.push((end, state));
        }
        self.moved.notify_all();
    }

    /// The hashing thread has ended; nobody waits for it any more.
    pub(crate) fn ended(&self) {
        self.lock().ended = true;
        self.moved.notify_all();
    }

    /// Marks the hashing thread ended when dropped, so that a panic in it releases the consumer.
    pub(crate) fn ends_on_drop(&self) -> HasherEnds<'_> {
        HasherEnds(self)
    }

    /// The latest state at or before chunk `end` (exclusive), dropping older ones; waits until
    /// the hashing thread got to `end` (it is fed in order, so it gets there unless it ended).
    pub(crate) fn latest_until(&self, end: u64) -> Option<(u64, [u8; STATE_LEN])> {
        let mut hashed = self.lock();
        while hashed.upto < end && !hashed.ended {
            hashed = self.moved.wait(hashed).unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        let usable = hashed.states.iter().rposition(|(at, _)| *at <= end)?;
        let found = hashed.states[usable];
        hashed.states.drain(..=usable);
        Some(found)
    }
}

/// See [`SavedStates::ends_on_drop`].
pub(crate) struct HasherEnds<'a>(&'a SavedStates);

impl Drop for HasherEnds<'_> {
    fn drop(&mut self) {
        self.0.ended();
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
        saved.hashed(5, Some([1; 32]));
        saved.hashed(10, Some([2; 32]));
        saved.hashed(12, None);
        assert_eq!(saved.latest_until(12), Some((10, [2; 32])));
        assert_eq!(saved.latest_until(12), None, "older states are dropped once used");
        saved.hashed(15, Some([3; 32]));
        assert_eq!(saved.latest_until(15), Some((15, [3; 32])));
    }

    #[test]
    fn the_consumer_waits_for_the_hasher_until_it_ends() {
        let saved = SavedStates::default();
        std::thread::scope(|s| {
            let waiter = s.spawn(|| saved.latest_until(4));
            saved.hashed(2, Some([1; 32]));
            saved.hashed(4, Some([2; 32]));
            assert_eq!(waiter.join().unwrap(), Some((4, [2; 32])), "the state at 4, not the one at 2");
            let waiter = s.spawn(|| saved.latest_until(8));
            saved.ended();
            assert_eq!(waiter.join().unwrap(), None, "an ended hasher releases the wait");
        });
    }
}
