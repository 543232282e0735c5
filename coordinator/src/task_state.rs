//! How a task changes on news from its agent, kept apart from the scheduler's bookkeeping so
//! that each rule is tested on its own.

use hyperexport_proto::v1::{DiskCheckpoint, JobState, Task, TaskCheckpointState, TaskFinished, TaskOutcome, TaskPhase, TaskProgress};

use crate::jobs::{is_final, now_ms};

/// Failed attempts after which a task fails for good.
pub const MAX_FAILURES: u32 = 3;
/// Wait before the first retry of a failed task; doubled for each further one.
pub const RETRY_BACKOFF_MS: i64 = 2_000;
/// Longest wait before a retry.
pub const MAX_RETRY_BACKOFF_MS: i64 = 60_000;
/// Wait before an attempt an agent refused is placed again.
pub const REFUSED_BACKOFF_MS: i64 = 1_000;

/// Whether an agent is working on the task (it was assigned and has not finished).
pub fn is_active(task: &Task) -> bool {
    matches!(task.state(), JobState::Scheduled | JobState::Running | JobState::Verifying)
}

/// Whether the task still occupies its agent: active, or cancelled and not yet confirmed stopped.
pub fn holds_agent(task: &Task) -> bool {
    !task.agent.is_empty() && task.finished_unix_ms == 0 && (is_active(task) || task.state() == JobState::Cancelled)
}

/// Puts the task back in the queue (its agent is gone); the checkpoint stays, so the next attempt
/// resumes from it.
pub fn requeue(task: &mut Task, why: String) {
    task.set_state(JobState::Pending);
    task.agent.clear();
    task.not_before_unix_ms = 0;
    task.error = why;
}

/// Applies progress; returns whether the state changed.
pub fn apply_progress(task: &mut Task, p: TaskProgress) -> bool {
    let before = task.state();
    let state = if p.phase() == TaskPhase::Verifying { JobState::Verifying } else { JobState::Running };
    if before == JobState::Scheduled || (before == JobState::Running && state == JobState::Verifying) {
        task.set_state(state);
    }
    task.bytes_done = p.disks.iter().map(|d| d.bytes_done).sum();
    task.bytes_total = p.disks.iter().map(|d| d.bytes_total).sum();
    task.bytes_read = p.bytes_read;
    task.disks = p.disks;
    task.state() != before
}

/// Appends a disk checkpoint to the task's state; false if it does not follow on from what is
/// there (then it is ignored: the state stays consistent, only less advanced).
pub fn append_checkpoint(state: &mut TaskCheckpointState, c: DiskCheckpoint) -> bool {
    match state.disks.iter_mut().find(|d| d.index == c.index) {
        Some(d)
            if d.name == c.name
                && d.size == c.size
                && d.chunk_size == c.chunk_size
                && c.start_chunk.checked_mul(32) == Some(d.chunk_ids.len() as u64) =>
        {
            d.chunk_ids.extend_from_slice(&c.chunk_ids);
            d.sha256_state = c.sha256_state;
            d.sha256 = c.sha256;
            true
        }
        Some(d) if c.start_chunk == 0 => {
            *d = c;
            true
        }
        None if c.start_chunk == 0 => {
            state.disks.push(c);
            true
        }
        _ => false,
    }
}

/// Bytes of the disks a checkpoint state covers.
pub fn checkpoint_bytes(state: &TaskCheckpointState) -> u64 {
    state.disks.iter().map(|d| (d.chunk_ids.len() as u64 / 32 * d.chunk_size as u64).min(d.size)).sum()
}

/// Applies the agent's result. A failure that may help to retry goes back to the queue after a
/// backoff, until [`MAX_FAILURES`].
pub fn apply_finished(task: &mut Task, f: TaskFinished, agent: &str) {
    let now = now_ms();
    task.finished_unix_ms = now;
    match f.outcome() {
        TaskOutcome::Succeeded => {
            task.set_state(JobState::Succeeded);
            task.point = f.point;
            task.stats = f.stats;
            task.error.clear();
            task.bytes_done = task.bytes_total;
        }
        TaskOutcome::Cancelled | TaskOutcome::Unspecified => task.set_state(JobState::Cancelled),
        TaskOutcome::Refused if task.state() == JobState::Cancelled => {}
        TaskOutcome::Refused => {
            requeue(task, format!("attempt {}: {}", f.attempt, f.error));
            task.not_before_unix_ms = now + REFUSED_BACKOFF_MS;
            task.finished_unix_ms = 0;
        }
        TaskOutcome::Failed if task.state() == JobState::Cancelled => {}
        TaskOutcome::Failed => {
            task.failures += 1;
            if f.retryable && task.failures < MAX_FAILURES {
                let wait = (RETRY_BACKOFF_MS << (task.failures - 1)).min(MAX_RETRY_BACKOFF_MS);
                requeue(task, format!("attempt {} on agent {agent} failed: {}; retrying in {} s", f.attempt, f.error, wait / 1000));
                task.not_before_unix_ms = now + wait;
                task.finished_unix_ms = 0;
            } else {
                task.set_state(JobState::Failed);
                task.error = format!("attempt {} on agent {agent} failed: {}", f.attempt, f.error);
            }
        }
    }
    debug_assert!(task.finished_unix_ms == 0 || is_final(task.state()));
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyperexport_proto::v1::DiskProgress;

    fn running() -> Task {
        Task { id: "t".into(), state: JobState::Running as i32, agent: "a".into(), attempt: 1, ..Default::default() }
    }

    #[test]
    fn progress_moves_state_forward_only() {
        let mut t = Task { state: JobState::Scheduled as i32, ..running() };
        let disks = vec![DiskProgress { name: "d".into(), bytes_done: 5, bytes_total: 10 }];
        let p = TaskProgress { phase: TaskPhase::Running as i32, disks, bytes_read: 5, ..Default::default() };
        assert!(apply_progress(&mut t, p.clone()));
        assert_eq!((t.state(), t.bytes_done, t.bytes_total), (JobState::Running, 5, 10));
        assert!(apply_progress(&mut t, TaskProgress { phase: TaskPhase::Verifying as i32, ..p.clone() }));
        assert!(!apply_progress(&mut t, p), "never back from verifying to running");
        assert_eq!(t.state(), JobState::Verifying);
    }

    #[test]
    fn checkpoints_append_only_in_order() {
        let c = |start: u64, n: usize| DiskCheckpoint {
            name: "d".into(),
            size: 100,
            chunk_size: 10,
            start_chunk: start,
            chunk_ids: vec![1; 32 * n],
            ..Default::default()
        };
        let mut s = TaskCheckpointState::default();
        assert!(!append_checkpoint(&mut s, c(2, 1)), "a gap is refused");
        assert!(append_checkpoint(&mut s, c(0, 2)));
        assert!(append_checkpoint(&mut s, c(2, 3)));
        assert!(!append_checkpoint(&mut s, c(2, 3)), "a repeat is refused");
        assert_eq!(checkpoint_bytes(&s), 50);
        assert!(append_checkpoint(&mut s, c(0, 1)), "a new attempt from the start replaces it");
        assert_eq!(checkpoint_bytes(&s), 10);
    }

    #[test]
    fn failures_retry_with_backoff_then_fail() {
        let mut t = running();
        let failed = TaskFinished {
            outcome: TaskOutcome::Failed as i32,
            retryable: true,
            error: "disk busy".into(),
            attempt: 1,
            ..Default::default()
        };
        apply_finished(&mut t, failed.clone(), "a");
        assert_eq!(t.state(), JobState::Pending);
        assert!(t.not_before_unix_ms > now_ms() && t.error.contains("disk busy"), "{}", t.error);
        for _ in 1..MAX_FAILURES {
            t.set_state(JobState::Running);
            apply_finished(&mut t, failed.clone(), "a");
        }
        assert_eq!(t.state(), JobState::Failed);
        let mut t = running();
        apply_finished(&mut t, TaskFinished { retryable: false, ..failed }, "a");
        assert_eq!(t.state(), JobState::Failed, "not retryable: fails at once");
        let mut t = running();
        let refused = TaskFinished { outcome: TaskOutcome::Refused as i32, attempt: 1, error: "full".into(), ..Default::default() };
        apply_finished(&mut t, refused, "a");
        assert_eq!((t.state(), t.failures, t.finished_unix_ms), (JobState::Pending, 0, 0), "a refusal is not a failure");
        assert!(t.not_before_unix_ms > now_ms());
        let mut t = running();
        apply_finished(&mut t, TaskFinished { outcome: TaskOutcome::Succeeded as i32, point: "p".into(), ..Default::default() }, "a");
        assert_eq!((t.state(), t.point.as_str()), (JobState::Succeeded, "p"));
    }
}
