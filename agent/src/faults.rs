//! Faults that tests inject into exports through the environment, so that a real process can be
//! killed or cancelled at a known point. All are off in normal use.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::error::{AgentError, Result};

/// The faults to inject.
#[derive(Debug, Clone, Copy, Default)]
pub struct TestFaults {
    /// After this many new chunks are stored, every worker stalls (until cancelled) instead of
    /// storing more (`HYPEREXPORT_TEST_STALL_AFTER_CHUNKS`).
    pub stall_after_new_chunks: Option<u64>,
    /// Each new chunk waits this long before it is stored (`HYPEREXPORT_TEST_CHUNK_DELAY_MS`).
    pub delay_per_new_chunk: Option<Duration>,
}

impl TestFaults {
    /// Reads the test environment variables.
    pub fn from_env() -> Self {
        let number = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok());
        TestFaults {
            stall_after_new_chunks: number("HYPEREXPORT_TEST_STALL_AFTER_CHUNKS"),
            delay_per_new_chunk: number("HYPEREXPORT_TEST_CHUNK_DELAY_MS").map(Duration::from_millis),
        }
    }

    /// Applies the faults before a new chunk is stored; `Err(Cancelled)` once `cancel` is set
    /// during a stall or delay.
    pub(crate) fn before_store(&self, stored: &AtomicU64, cancel: &AtomicBool) -> Result<()> {
        let pause = |until: Option<Instant>| {
            while until.is_none_or(|t| Instant::now() < t) {
                if cancel.load(Ordering::Relaxed) {
                    return Err(AgentError::Cancelled);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Ok(())
        };
        if let Some(limit) = self.stall_after_new_chunks
            && stored.fetch_add(1, Ordering::SeqCst) >= limit
        {
            pause(None)?;
        }
        if let Some(delay) = self.delay_per_new_chunk {
            pause(Some(Instant::now() + delay))?;
        }
        Ok(())
    }
}

/// How long the replica receiver waits before storing each chunk
/// (`HYPEREXPORT_TEST_RECEIVE_DELAY_MS`), so that a test can kill it mid-stream.
pub fn receive_delay() -> Option<Duration> {
    static DELAY: std::sync::OnceLock<Option<Duration>> = std::sync::OnceLock::new();
    *DELAY.get_or_init(|| std::env::var("HYPEREXPORT_TEST_RECEIVE_DELAY_MS").ok().and_then(|v| v.parse().ok()).map(Duration::from_millis))
}
