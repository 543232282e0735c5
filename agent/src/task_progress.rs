//! Live progress of one task, written by the export's threads and read by its `JobSupervisor`,
//! which sends it to the coordinator.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use hyperexport_proto::v1::{DiskProgress, TaskPhase, TaskProgress};

use crate::progress::Progress;

/// Per-disk byte counts and the bytes read by this attempt.
pub struct TaskCounters {
    disks: Mutex<Vec<DiskProgress>>,
    bytes_read: AtomicU64,
}

impl TaskCounters {
    /// Counters for disks of these names and sizes.
    pub fn new(disks: impl IntoIterator<Item = (String, u64)>) -> Self {
        let disks = disks.into_iter().map(|(name, bytes_total)| DiskProgress { name, bytes_done: 0, bytes_total }).collect();
        TaskCounters { disks: Mutex::new(disks), bytes_read: AtomicU64::new(0) }
    }

    fn with_disk(&self, name: &str, f: impl FnOnce(&mut DiskProgress)) {
        if let Some(d) = self.disks.lock().expect("task counters lock").iter_mut().find(|d| d.name == name) {
            f(d);
        }
    }

    /// The progress message for task `task_id`, attempt `attempt`, in `phase`.
    pub fn snapshot(&self, task_id: &str, attempt: u32, phase: TaskPhase) -> TaskProgress {
        TaskProgress {
            task_id: task_id.to_string(),
            attempt,
            phase: phase as i32,
            disks: self.disks.lock().expect("task counters lock").clone(),
            bytes_read: self.bytes_read.load(Ordering::Relaxed),
            ..Default::default()
        }
    }
}

impl Progress for TaskCounters {
    fn disk_started(&self, disk: &str, total: u64) {
        self.with_disk(disk, |d| {
            d.bytes_total = total;
            d.bytes_done = 0;
        });
    }

    fn advanced(&self, disk: &str, bytes: u64) {
        self.with_disk(disk, |d| d.bytes_done = (d.bytes_done + bytes).min(d.bytes_total));
    }

    fn read(&self, bytes: u64) {
        self.bytes_read.fetch_add(bytes, Ordering::Relaxed);
        crate::metrics::bytes_read(bytes);
    }

    fn note(&self, message: &str) {
        tracing::info!(message, "export");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_disk_and_restarts_a_disk_from_zero() {
        let c = TaskCounters::new([("a".to_string(), 100), ("b".to_string(), 50)]);
        c.disk_started("a", 100);
        c.advanced("a", 60);
        c.read(60);
        c.advanced("nope", 5);
        let s = c.snapshot("t", 2, TaskPhase::Running);
        assert_eq!((s.disks[0].bytes_done, s.disks[1].bytes_done, s.bytes_read, s.attempt), (60, 0, 60, 2));
        c.disk_started("a", 100);
        c.advanced("a", 500);
        assert_eq!(c.snapshot("t", 2, TaskPhase::Running).disks[0].bytes_done, 100, "never above the total");
    }
}
