//! `JobSupervisor`: runs one task (one VM to one target). It opens the source and the target,
//! then runs a `DiskReader` per disk, one after the other, and an `Uploader` for the target.
//!
//! Restart policy: a child that fails is started again after a backoff (1 s, doubling, at most
//! 8 s) while the task's retry budget lasts ([`RESTART_BUDGET`] restarts); a restarted reader goes
//! on from the disk's last checkpoint. When the budget is spent, or the failure happens before
//! any child runs, the task fails and the coordinator decides whether to retry it elsewhere. On
//! cancel the children stop, the repository lock is released and no point is published.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hyperexport_proto::v1::agent_message::Body as AgentBody;
use hyperexport_proto::v1::{self as pb, Assign, TaskFinished, TaskOutcome, TaskPhase};
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, SupervisionEvent};

use super::ChildStop;
use super::agent_root::AgentRootMsg;
use super::disk_reader::{DiskReader, DiskReaderConfig};
use super::replicator::{Replicator, ReplicatorConfig};
use super::task_open::{Opened, open, retention_of, stats_of};
use super::uploader::{Uploader, UploaderConfig};
use crate::AgentError;
use crate::bandwidth::{Limiter, Throttle};
use crate::checkpoint::{DiskCheckpoint, DiskResume, encode_chunks};
use crate::export::{DiskResult, ExportReport, ExportRun, TestFaults};
use crate::progress::Progress;
use crate::replication::tls::NodeTls;
use crate::source::AgentSource;
use crate::target::TargetAccess;
use crate::task_progress::TaskCounters;
use hyperexport_shared::prune::prune;

/// Restarts of children a task may use before it fails.
pub const RESTART_BUDGET: u32 = 3;
/// Wait before the first restart; doubled for each further one, up to [`MAX_RESTART_BACKOFF`].
pub const RESTART_BACKOFF: Duration = Duration::from_secs(1);
/// Longest wait before a restart.
pub const MAX_RESTART_BACKOFF: Duration = Duration::from_secs(8);
/// The reason a child gives when it stops because the task was cancelled.
pub const STOPPED_BY_CANCEL: &str = "cancelled";
/// How long pruning the target after a task waits for other exports of it to finish.
const PRUNE_WAIT: Duration = Duration::from_secs(600);
/// How often progress goes to the coordinator while it changes.
pub const PROGRESS_EVERY: Duration = Duration::from_millis(500);

/// One task and what the agent gives it.
#[derive(Clone)]
pub struct JobSupervisorConfig {
    /// The coordinator's assignment.
    pub assign: Assign,
    /// Where the agent's VMs are.
    pub source: AgentSource,
    /// How to open targets.
    pub access: TargetAccess,
    /// Export settings (chunk size and compression are the target's).
    pub threads: usize,
    /// Fault injection for tests.
    pub faults: TestFaults,
    /// Wait before the first restart of a failed child ([`RESTART_BACKOFF`] in agents).
    pub restart_backoff: Duration,
    /// Set by `AgentRoot` on cancel (also read while waiting for the repository lock).
    pub cancel: Arc<AtomicBool>,
    /// The agent's TLS identity, for replication.
    pub tls: Option<NodeTls>,
    /// Who gets the task's news.
    pub root: ActorRef<AgentRootMsg>,
    /// The agent's bandwidth limiter.
    pub limiter: Arc<Limiter>,
}

impl JobSupervisorConfig {
    /// The task's handle on the agent's bandwidth limiter.
    pub(super) fn throttle(&self) -> Throttle {
        Throttle { limiter: Arc::clone(&self.limiter), job: self.assign.job_id.clone() }
    }
}

/// Messages `JobSupervisor` handles.
pub enum JobSupervisorMsg {
    /// Open the source and the target, then start the first disk.
    Start,
    /// A reader made part of disk `index` durable.
    Checkpoint { index: usize, checkpoint: DiskCheckpoint },
    /// Disk `index` is exported.
    DiskDone { index: usize, result: Box<DiskResult> },
    /// The point is published.
    Published { report: Box<ExportReport> },
    /// The point's replication to one region is over.
    RegionReplicated { result: pb::ReplicaResult },
    /// The point's replication is over, one result per region.
    Replicated { results: Vec<pb::ReplicaResult> },
    /// Stop the task (the cancel flag is already set); `moved`: it runs elsewhere now, so what
    /// its attempts share stays.
    Cancel { moved: bool },
    /// Time to report progress.
    Tick,
    /// Start the child for the current step again (after a failure's backoff).
    Restart,
}

/// `JobSupervisor`'s state.
pub struct JobSupervisorState {
    config: JobSupervisorConfig,
    counters: Arc<TaskCounters>,
    run: Option<Arc<ExportRun>>,
    /// Per disk: where to resume it, or its result once done.
    resume: Vec<Option<DiskResume>>,
    done: Vec<Option<DiskResult>>,
    sizes: Vec<u64>,
    phase: TaskPhase,
    restarts: u32,
    child: Option<ActorCell>,
    last_progress: Option<pb::TaskProgress>,
    ticker: Option<tokio::task::JoinHandle<()>>,
    finished: bool,
    started: std::time::Instant,
    stats: Option<pb::ExportStats>,
    /// The published point, while it is being replicated.
    published: Option<String>,
    /// Cancelled because the task moved to another agent.
    moved: bool,
    replicas: Vec<pb::ReplicaResult>,
}

/// Supervises one task.
pub struct JobSupervisor;

impl JobSupervisorState {
    fn task_id(&self) -> &str {
        &self.config.assign.task_id
    }

    fn up(&self, body: AgentBody) {
        let _ = self.config.root.send_message(AgentRootMsg::Up { task_id: self.task_id().to_string(), body });
    }

    /// Reports the outcome and stops the supervisor.
    fn finish(&mut self, myself: &ActorRef<JobSupervisorMsg>, outcome: TaskOutcome, error: String, point: String, retryable: bool) {
        if self.finished {
            return;
        }
        self.finished = true;
        self.send_progress();
        let succeeded = outcome == TaskOutcome::Succeeded;
        let status = match outcome {
            TaskOutcome::Succeeded => "succeeded",
            TaskOutcome::Cancelled => "cancelled",
            TaskOutcome::Failed | TaskOutcome::Unspecified | TaskOutcome::Refused => "failed",
        };
        let provider = match &self.config.source {
            AgentSource::Local(_) => "local",
            AgentSource::Vsphere(_) => "vsphere",
        };
        crate::metrics::finished(provider, status, self.started.elapsed());
        let a = &self.config.assign;
        // The export's snapshot goes once the task has ended for good; a retry of a retryable
        // failure reads it again, and an attempt cancelled because the task moved shares it
        // with the attempt that runs now, so it stays for those (`snapshots cleanup` removes
        // leftovers).
        if let AgentSource::Vsphere(connection) = &self.config.source
            && !(outcome == TaskOutcome::Failed && retryable)
            && !self.moved
        {
            let (connection, vm, task) = (connection.clone(), a.vm.clone(), a.task_id.clone());
            tokio::task::spawn_blocking(move || match crate::vsphere::export::release(&connection, &vm, &task) {
                Ok(true) => tracing::info!(vm, task, "export snapshot removed"),
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(vm, task, error = %e, "cannot remove the export snapshot; `hyperexport snapshots cleanup` removes it")
                }
            });
        }
        tracing::info!(task = %a.task_id, vm = %a.vm, attempt = a.attempt, outcome = outcome.as_str_name(), error = %error, "task finished");
        let stats = self.stats.take();
        let finished = TaskFinished {
            task_id: a.task_id.clone(),
            attempt: a.attempt,
            outcome: outcome as i32,
            error,
            point,
            retryable,
            stats,
            replicas: std::mem::take(&mut self.replicas),
            point_unix_ms: self.run.as_ref().filter(|_| outcome == TaskOutcome::Succeeded).map_or(0, |r| r.time_unix_ms()),
        };
        self.up(AgentBody::Finished(finished));
        // The export's locks go with the run; then the target is pruned by the task's rules, off
        // the task's path (a prune waits for other exports of the repository to finish).
        let run = self.run.take();
        let retention = retention_of(a);
        if succeeded && !retention.is_empty() {
            let (vm, storage) = (a.vm.clone(), run.as_ref().map(|r| r.repo().storage().clone()));
            drop(run);
            if let Some(storage) = storage {
                tokio::task::spawn_blocking(move || match prune(storage.as_ref(), Some(&vm), &retention, false, PRUNE_WAIT) {
                    Ok(report) => tracing::info!(
                        vm,
                        removed = report.removed.values().map(Vec::len).sum::<usize>(),
                        chunks = report.chunks_removed,
                        "target pruned"
                    ),
                    Err(e) => tracing::warn!(vm, error = %e, "target prune failed"),
                });
            }
        }
        myself.stop(None);
    }

    fn send_progress(&mut self) {
        let a = &self.config.assign;
        let mut now = self.counters.snapshot(&a.task_id, a.attempt, self.phase);
        if let Some(point) = &self.published {
            now.point = point.clone();
            now.point_unix_ms = self.run.as_ref().map_or(0, |r| r.time_unix_ms());
            now.replicas = self.replicas.clone();
        }
        if self.last_progress.as_ref() != Some(&now) {
            self.last_progress = Some(now.clone());
            self.up(AgentBody::Progress(now));
        }
    }

    /// Starts the child for the next step: the first disk not done, else the uploader.
    async fn start_next(&mut self, myself: &ActorRef<JobSupervisorMsg>) -> Result<(), ActorProcessingErr> {
        let run = Arc::clone(self.run.as_ref().ok_or("the export is not open")?);
        let cell = match self.done.iter().position(Option::is_none) {
            Some(index) => {
                let config = DiskReaderConfig {
                    run,
                    index,
                    resume: self.resume[index].clone(),
                    cancel: Arc::clone(&self.config.cancel),
                    counters: Arc::clone(&self.counters),
                    supervisor: myself.clone(),
                };
                DiskReader::spawn_linked(None, DiskReader, config, myself.get_cell()).await?.0.get_cell()
            }
            None => {
                self.phase = TaskPhase::Verifying;
                self.send_progress();
                let disks = self.done.iter().flatten().cloned().collect();
                let config = UploaderConfig { run, disks, counters: Arc::clone(&self.counters), supervisor: myself.clone() };
                Uploader::spawn_linked(None, Uploader, config, myself.get_cell()).await?.0.get_cell()
            }
        };
        self.child = Some(cell);
        Ok(())
    }
}

impl Actor for JobSupervisor {
    type Msg = JobSupervisorMsg;
    type State = JobSupervisorState;
    type Arguments = JobSupervisorConfig;

    async fn pre_start(&self, myself: ActorRef<Self::Msg>, config: JobSupervisorConfig) -> Result<Self::State, ActorProcessingErr> {
        myself.send_message(JobSupervisorMsg::Start)?;
        crate::metrics::active(1.0);
        let ticker = myself.send_interval(PROGRESS_EVERY, || JobSupervisorMsg::Tick);
        Ok(JobSupervisorState {
            config,
            counters: Arc::new(TaskCounters::new([])),
            run: None,
            resume: Vec::new(),
            done: Vec::new(),
            sizes: Vec::new(),
            phase: TaskPhase::Running,
            restarts: 0,
            child: None,
            last_progress: None,
            ticker: Some(ticker),
            finished: false,
            started: std::time::Instant::now(),
            stats: None,
            published: None,
            moved: false,
            replicas: Vec::new(),
        })
    }

    async fn post_stop(&self, _myself: ActorRef<Self::Msg>, state: &mut Self::State) -> Result<(), ActorProcessingErr> {
        if let Some(t) = state.ticker.take() {
            t.abort();
        }
        crate::metrics::active(-1.0);
        Ok(())
    }

    async fn handle(&self, myself: ActorRef<Self::Msg>, message: Self::Msg, state: &mut Self::State) -> Result<(), ActorProcessingErr> {
        if state.finished {
            return Ok(());
        }
        match message {
            JobSupervisorMsg::Start => {
                let task = &state.config.assign;
                tracing::info!(task = %task.task_id, vm = %task.vm, target = %task.target, attempt = task.attempt, "task started");
                let config = state.config.clone();
                let opened = match tokio::task::spawn_blocking(move || open(&config)).await? {
                    Ok(opened) => opened,
                    Err(AgentError::Cancelled) => {
                        state.finish(&myself, TaskOutcome::Cancelled, String::new(), String::new(), false);
                        return Ok(());
                    }
                    Err(e) => {
                        let permanent = match &e {
                            AgentError::Invalid(_) | AgentError::Source { .. } => true,
                            AgentError::Vsphere(v) => v.is_permanent(),
                            _ => false,
                        };
                        let retryable = !permanent;
                        state.finish(&myself, TaskOutcome::Failed, e.to_string(), String::new(), retryable);
                        return Ok(());
                    }
                };
                let Opened { run, sizes, plan } = opened;
                let names = run.source().disks.iter().map(|d| d.name.clone());
                state.counters = Arc::new(TaskCounters::new(names.zip(sizes.iter().copied())));
                for (_, report) in plan.complete.iter().flatten() {
                    state.counters.disk_started(&report.name, report.size);
                    state.counters.advanced(&report.name, report.size);
                }
                state.resume = plan.partial;
                state.done = plan.complete;
                state.sizes = sizes;
                state.run = Some(Arc::new(run));
                state.start_next(&myself).await?;
            }
            JobSupervisorMsg::Checkpoint { index, checkpoint } => {
                let Some(run) = &state.run else { return Ok(()) };
                let disk = &run.source().disks[index];
                let size = state.sizes[index];
                let message = pb::DiskCheckpoint {
                    index: index as u32,
                    name: disk.name.clone(),
                    size,
                    chunk_size: run.chunk_size(),
                    start_chunk: checkpoint.start_chunk,
                    chunk_ids: encode_chunks(&checkpoint.chunks),
                    sha256_state: checkpoint.sha256_state.to_vec(),
                    sha256: checkpoint.sha256.clone().unwrap_or_default(),
                };
                let resume = state.resume[index].get_or_insert_with(|| DiskResume {
                    size,
                    chunk_size: run.chunk_size(),
                    chunks: Vec::new(),
                    sha256_state: [0; 32],
                });
                if resume.chunks.len() as u64 == checkpoint.start_chunk && checkpoint.sha256.is_none() {
                    resume.chunks.extend(checkpoint.chunks);
                    resume.sha256_state = checkpoint.sha256_state;
                }
                let a = &state.config.assign;
                let body = pb::TaskCheckpoint { task_id: a.task_id.clone(), attempt: a.attempt, disk: Some(message) };
                state.up(AgentBody::Checkpoint(body));
            }
            JobSupervisorMsg::DiskDone { index, result } => {
                state.done[index] = Some(*result);
                state.resume[index] = None;
                state.child = None;
                if state.config.cancel.load(Ordering::SeqCst) {
                    state.finish(&myself, TaskOutcome::Cancelled, String::new(), String::new(), false);
                } else {
                    state.start_next(&myself).await?;
                }
            }
            JobSupervisorMsg::Published { report } => {
                state.child = None;
                let note = state.run.as_ref().and_then(|r| r.source().note.clone());
                state.stats = Some(stats_of(&report, note.as_deref()));
                let targets = state.config.assign.replicate_to.clone();
                let Some(repo) = state.run.as_ref().filter(|_| !targets.is_empty()).map(|run| run.repo_shared()) else {
                    state.finish(&myself, TaskOutcome::Succeeded, String::new(), report.point, false);
                    return Ok(());
                };
                state.phase = TaskPhase::Replicating;
                state.send_progress();
                state.published = Some(report.point.clone());
                let config = ReplicatorConfig {
                    repo,
                    point: report.point,
                    targets,
                    tls: state.config.tls.clone(),
                    cancel: Arc::clone(&state.config.cancel),
                    retention: retention_of(&state.config.assign),
                    supervisor: myself.clone(),
                    throttle: Some(state.config.throttle()),
                };
                state.child = Some(Replicator::spawn_linked(None, Replicator, config, myself.get_cell()).await?.0.get_cell());
            }
            JobSupervisorMsg::RegionReplicated { result } => {
                state.replicas.push(result);
                state.send_progress();
            }
            JobSupervisorMsg::Replicated { results } => {
                state.child = None;
                state.replicas = results;
                let point = state.published.take().unwrap_or_default();
                state.finish(&myself, TaskOutcome::Succeeded, String::new(), point, false);
            }
            JobSupervisorMsg::Cancel { moved } => {
                state.moved |= moved;
                state.config.cancel.store(true, Ordering::SeqCst);
                if state.child.is_none() {
                    state.finish(&myself, TaskOutcome::Cancelled, String::new(), String::new(), false);
                }
            }
            JobSupervisorMsg::Tick => state.send_progress(),
            JobSupervisorMsg::Restart => {
                if state.config.cancel.load(Ordering::SeqCst) {
                    state.finish(&myself, TaskOutcome::Cancelled, String::new(), String::new(), false);
                } else {
                    state.start_next(&myself).await?;
                }
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let Some(ChildStop { cell, reason, error }) = ChildStop::of(event) else { return Ok(()) };
        if state.child.as_ref().map(ActorCell::get_id) != Some(cell.get_id()) {
            return Ok(());
        }
        // A child that ended normally has sent its result, which supervision events overtake:
        // the result's handler goes on (and looks at the cancel flag itself).
        if error.is_none() && reason.as_deref() != Some(STOPPED_BY_CANCEL) {
            return Ok(());
        }
        state.child = None;
        // Once published, the point stands: a replication that broke is a failed region.
        if let Some(point) = state.published.take() {
            let error = error.unwrap_or_else(|| "cancelled".into());
            let failed = |t: &pb::ReplicaTarget| pb::ReplicaResult { region: t.region.clone(), error: error.clone(), ..Default::default() };
            state.replicas = state.config.assign.replicate_to.iter().map(failed).collect();
            state.finish(&myself, TaskOutcome::Succeeded, String::new(), point, false);
            return Ok(());
        }
        if state.config.cancel.load(Ordering::SeqCst) {
            state.finish(&myself, TaskOutcome::Cancelled, String::new(), String::new(), false);
            return Ok(());
        }
        let error = error.unwrap_or_else(|| "a step stopped as cancelled, but the task was not cancelled".into());
        if state.restarts >= RESTART_BUDGET {
            let message = format!("{error} (after {} restarts)", state.restarts);
            state.finish(&myself, TaskOutcome::Failed, message, String::new(), true);
            return Ok(());
        }
        let backoff = (state.config.restart_backoff * 2u32.pow(state.restarts)).min(MAX_RESTART_BACKOFF);
        state.restarts += 1;
        tracing::warn!(task = %state.task_id(), error = %error, restart = state.restarts, backoff_ms = backoff.as_millis() as u64, "task step failed; restarting it");
        myself.send_after(backoff, || JobSupervisorMsg::Restart);
        Ok(())
    }
}

#[cfg(test)]
#[path = "job_supervisor_tests.rs"]
mod tests;
