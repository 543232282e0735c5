//! Jobs and their state machine: validation of a submission, the job state derived from its
//! tasks, and the transitions the API allows.

use std::time::{SystemTime, UNIX_EPOCH};

use hyperexport_proto::v1::{Job, JobState, SubmitRequest, Task};

use crate::error::{CoordinatorError, Result};

/// Highest priority a job may ask for.
pub const MAX_PRIORITY: i32 = 100;
/// Most VMs one job may name.
pub const MAX_VMS: usize = 10_000;

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// A new random id (16 hex digits).
pub fn new_id() -> String {
    new_ids(1).pop().expect("one id asked for")
}

/// `n` new random ids (16 hex digits each), from one read of the OS random number generator
/// (a job of a thousand VMs asks for a thousand and one).
pub fn new_ids(n: usize) -> Vec<String> {
    let mut bytes = vec![0u8; 8 * n];
    hyperexport_shared::crypto::random_bytes(&mut bytes);
    bytes.chunks_exact(8).map(hex::encode).collect()
}

/// Checks a target: `file:///absolute/path` on the agent's host, or an object store or SFTP URL
/// (`s3://`, `azure://`, `gs://` with a bucket, `sftp://` with a host; the agent checks the rest).
pub fn validate_target(target: &str) -> Result<()> {
    for scheme in ["s3://", "azure://", "gs://", "sftp://"] {
        if let Some(rest) = target.strip_prefix(scheme) {
            if rest.split(['/', '?']).next().is_none_or(str::is_empty) {
                return Err(CoordinatorError::Invalid(format!("target {target:?} names no bucket or container")));
            }
            return Ok(());
        }
    }
    let path = target.strip_prefix("file://").ok_or_else(|| {
        CoordinatorError::Invalid(format!(
            "target {target:?} is neither a file:///absolute/path URL nor an s3://, azure://, gs:// or sftp:// one"
        ))
    })?;
    if !path.starts_with('/') || path.split('/').any(|c| c == "..") {
        return Err(CoordinatorError::Invalid(format!("target {target:?} must name an absolute path without `..`")));
    }
    Ok(())
}

/// Builds a pending job, one task per VM, from a submission.
pub fn new_job(req: SubmitRequest) -> Result<Job> {
    if req.vms.is_empty() {
        return Err(CoordinatorError::Invalid("vms is empty: name at least one VM".into()));
    }
    if req.vms.len() > MAX_VMS {
        return Err(CoordinatorError::Invalid(format!("{} VMs in one job; at most {MAX_VMS}", req.vms.len())));
    }
    let mut seen = std::collections::HashSet::new();
    for (i, vm) in req.vms.iter().enumerate() {
        if vm.trim().is_empty() || vm.len() > 255 || vm.chars().any(char::is_control) {
            return Err(CoordinatorError::Invalid(format!("vms[{i}] {vm:?} is not a VM name (1-255 printable characters)")));
        }
        if !seen.insert(vm.as_str()) {
            return Err(CoordinatorError::Invalid(format!("vms[{i}] {vm:?} is named twice")));
        }
    }
    validate_target(&req.target)?;
    if !(0..=MAX_PRIORITY).contains(&req.priority) {
        return Err(CoordinatorError::Invalid(format!("priority {} is outside 0-{MAX_PRIORITY}", req.priority)));
    }
    let now = now_ms();
    let mut ids = new_ids(req.vms.len() + 1);
    let job_id = ids.pop().expect("one more id than VMs");
    let tasks =
        req.vms.into_iter().zip(ids).map(|(vm, id)| Task { id, vm, state: JobState::Pending as i32, ..Default::default() }).collect();
    for (k, v) in &req.labels {
        if k.is_empty() || k.len() > 128 || v.len() > 128 || k.chars().chain(v.chars()).any(char::is_control) {
            return Err(CoordinatorError::Invalid(format!("label {k:?}={v:?}: keys 1-128 and values 0-128 printable characters")));
        }
    }
    for region in std::iter::once(&req.region).chain(&req.replicate_to) {
        if region.len() > 128 || region.chars().any(char::is_control) {
            return Err(CoordinatorError::Invalid(format!("region {region:?} is not 0-128 printable characters")));
        }
    }
    if req.replicate_to.iter().any(String::is_empty) || req.replicate_to.len() > 16 {
        return Err(CoordinatorError::Invalid("replicate_to: 1-16 non-empty region names".into()));
    }
    let mut job = Job {
        id: job_id,
        state: 0,
        tasks,
        target: req.target,
        priority: req.priority,
        created_unix_ms: now,
        updated_unix_ms: now,
        region: req.region,
        labels: req.labels,
        max_parallel: req.max_parallel,
        replicate_to: req.replicate_to,
        policy: String::new(),
        retention: None,
        class: req.class,
        bandwidth_cap: req.bandwidth_cap,
        bandwidth_burst: req.bandwidth_burst,
    };
    job.state = derive_state(&job.tasks) as i32;
    Ok(job)
}

/// Whether a state is final.
pub fn is_final(state: JobState) -> bool {
    matches!(state, JobState::Succeeded | JobState::Failed | JobState::Cancelled)
}

/// A job's state from its tasks: the least advanced unfinished state if any task is unfinished,
/// else failed if any failed, else cancelled if any was cancelled, else succeeded.
pub fn derive_state(tasks: &[Task]) -> JobState {
    let states: Vec<JobState> = tasks.iter().map(Task::state).collect();
    if let Some(s) = states.iter().copied().filter(|s| !is_final(*s)).min_by_key(|s| *s as i32) {
        return s;
    }
    if states.contains(&JobState::Failed) {
        JobState::Failed
    } else if states.contains(&JobState::Cancelled) {
        JobState::Cancelled
    } else {
        JobState::Succeeded
    }
}

/// Cancels every unfinished task of a job; an already finished job is a conflict.
pub fn cancel(job: &mut Job) -> Result<()> {
    let state = job.state();
    if is_final(state) {
        return Err(CoordinatorError::Conflict(format!("job {} already finished ({})", job.id, state.as_str_name())));
    }
    for task in job.tasks.iter_mut().filter(|t| !is_final(t.state())) {
        task.set_state(JobState::Cancelled);
    }
    job.set_state(derive_state(&job.tasks));
    job.updated_unix_ms = now_ms();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(vms: &[&str], target: &str, priority: i32) -> SubmitRequest {
        SubmitRequest { vms: vms.iter().map(|s| s.to_string()).collect(), target: target.into(), priority, ..Default::default() }
    }

    #[test]
    fn submissions_are_validated() {
        let job = new_job(req(&["web", "db"], "file:///srv/repo", 5)).unwrap();
        new_job(req(&["web"], "s3://bucket/prefix?endpoint=http://127.0.0.1:9000", 0)).expect("object store targets are accepted");
        assert_eq!(job.tasks.len(), 2);
        assert_eq!(job.state, JobState::Pending as i32);
        let mut ids: Vec<&str> = job.tasks.iter().map(|t| t.id.as_str()).chain([job.id.as_str()]).collect();
        assert!(ids.iter().all(|id| id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit())), "{ids:?}");
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 3, "the job and each task have ids of their own");
        for (bad, needle) in [
            (req(&[], "file:///r", 0), "vms is empty"),
            (req(&["a", "a"], "file:///r", 0), "named twice"),
            (req(&[""], "file:///r", 0), "not a VM name"),
            (req(&["a"], "file://relative", 0), "absolute path"),
            (req(&["a"], "file:///r/../etc", 0), "absolute path"),
            (req(&["a"], "file:///r", 101), "priority 101"),
            (req(&["a"], "s3:///prefix", 0), "names no bucket"),
            (req(&["a"], "ftp://host/r", 0), "neither a file:///"),
        ] {
            let e = new_job(bad).unwrap_err().to_string();
            assert!(e.contains(needle), "{e}");
        }
    }

    #[test]
    fn state_is_derived_and_cancel_is_final() {
        let t = |s: JobState| Task { state: s as i32, ..Default::default() };
        assert_eq!(derive_state(&[t(JobState::Running), t(JobState::Pending)]), JobState::Pending);
        assert_eq!(derive_state(&[t(JobState::Succeeded), t(JobState::Verifying)]), JobState::Verifying);
        assert_eq!(derive_state(&[t(JobState::Succeeded), t(JobState::Failed)]), JobState::Failed);
        assert_eq!(derive_state(&[t(JobState::Succeeded), t(JobState::Cancelled)]), JobState::Cancelled);
        assert_eq!(derive_state(&[t(JobState::Succeeded)]), JobState::Succeeded);
        let mut job = new_job(req(&["a", "b"], "file:///r", 0)).unwrap();
        job.tasks[0].state = JobState::Succeeded as i32;
        cancel(&mut job).unwrap();
        assert_eq!(job.tasks[0].state, JobState::Succeeded as i32, "finished tasks keep their state");
        assert_eq!(job.state, JobState::Cancelled as i32);
        assert!(cancel(&mut job).unwrap_err().to_string().contains("already finished"));
    }
}
