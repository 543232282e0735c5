//! Progress reporting from the data path to whoever shows it (terminal bars, JSON lines).

/// Receives progress from an export, verify or restore. Called from worker threads.
pub trait Progress: Sync {
    /// A disk of `total` bytes starts.
    fn disk_started(&self, _disk: &str, _total: u64) {}
    /// `bytes` more of `disk` are done (holes count as done when passed).
    fn advanced(&self, _disk: &str, _bytes: u64) {}
    /// `bytes` were read from the source.
    fn read(&self, _bytes: u64) {}
    /// The disk is done.
    fn disk_finished(&self, _disk: &str) {}
    /// A notable event in words (lower case, no trailing period).
    fn note(&self, _message: &str) {}
}

/// Reports nothing.
pub struct NoProgress;

impl Progress for NoProgress {}
