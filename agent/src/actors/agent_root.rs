//! `AgentRoot`: attaches the agent to its coordinator (`AgentService.Attach`), registers it with
//! its region, labels, inventory and running tasks, sends heartbeats at the interval the
//! coordinator asks for, and reattaches with exponential backoff whenever the stream fails.
//!
//! It supervises one `JobSupervisor` per assigned task, passes cancels down and the tasks' news
//! up. A task's result is kept until the coordinator releases it, and checkpoints made while the
//! coordinator is away are kept in order, so both survive a reconnect. A supervisor that stops
//! without a result is reported as a retryable failure.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hyperexport_proto::v1::agent_message::Body as AgentBody;
use hyperexport_proto::v1::coordinator_message::Body as CoordinatorBody;
use hyperexport_proto::v1::{AgentMessage, Assign, Drill, DrillDone, Heartbeat, RunningTask, TaskFinished, TaskOutcome, Vm};
use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};
use tokio::sync::mpsc;

use super::ChildStop;
use super::job_supervisor::{JobSupervisor, JobSupervisorConfig, JobSupervisorMsg};
use crate::attach::{AttachConfig, attach, inventory_of};
use crate::bandwidth::Limiter;
use crate::export::TestFaults;
use crate::replication::tls::NodeTls;
use crate::source::AgentSource;
use crate::target::TargetAccess;

/// First wait before reattaching; doubled after each failure up to [`MAX_BACKOFF`].
pub const MIN_BACKOFF: Duration = Duration::from_millis(200);
/// Longest wait between attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// Longest wait between attempts while it holds tasks (running, or results not yet released):
/// a coordinator that has just started (or taken over) waits that long, and a little more, for
/// agents to come back before it runs their tasks elsewhere (`RESTART_GRACE` there).
pub const BUSY_MAX_BACKOFF: Duration = Duration::from_secs(1);

/// What an agent is, where its coordinator is, and how it runs tasks.
#[derive(Clone)]
pub struct AgentRootConfig {
    /// Identity, location and coordinator.
    pub attach: AttachConfig,
    /// Where the VMs it serves are.
    pub source: AgentSource,
    /// How tasks open their targets.
    pub access: TargetAccess,
    /// Worker threads per task.
    pub threads: usize,
    /// Fault injection for tests.
    pub faults: TestFaults,
    /// Its TLS identity, for replication (none: tasks that replicate report every region failed).
    pub tls: Option<NodeTls>,
    /// Where the replicas it receives are (none: it keeps none, and refuses test failovers).
    pub replica_root: Option<PathBuf>,
    /// Where test failovers restore to (emptied after each).
    pub scratch: PathBuf,
}

/// Messages `AgentRoot` handles.
pub enum AgentRootMsg {
    /// Try to attach now.
    Attach,
    /// Time for the heartbeat of attachment `generation`.
    Heartbeat { generation: u64 },
    /// The coordinator sent something on attachment `generation`.
    Down { generation: u64, body: CoordinatorBody },
    /// The stream of attachment `generation` ended.
    Detached { generation: u64, reason: String },
    /// News of a task for the coordinator.
    Up { task_id: String, body: AgentBody },
    /// A test failover is over: its report goes to the coordinator.
    DrillDone(DrillDone),
    /// A task's supervisor stopped; if its result has not come by the time this is handled
    /// (results are sent before the supervisor stops), the task was lost.
    SupervisorStopped { task_id: String, reason: Option<String> },
}

/// A task this agent runs or has run.
struct TaskSlot {
    attempt: u32,
    cancel: Arc<AtomicBool>,
    supervisor: Option<ActorRef<JobSupervisorMsg>>,
    /// The result, kept until the coordinator releases it.
    finished: Option<TaskFinished>,
    /// Checkpoints not yet sent (the stream was down).
    unsent: Vec<AgentMessage>,
}

/// `AgentRoot`'s state, built in `pre_start`.
pub struct AgentRootState {
    config: AgentRootConfig,
    vms: Vec<Vm>,
    /// The open stream's sender and its generation, while attached.
    outbound: Option<(u64, mpsc::Sender<AgentMessage>)>,
    generation: u64,
    heartbeat: Duration,
    sequence: u64,
    backoff: Duration,
    tasks: HashMap<String, TaskSlot>,
    /// Bandwidth limits of all its tasks, at the rates the coordinator last sent.
    limiter: Arc<Limiter>,
    /// The highest coordinator term it accepted an assignment of (the fencing token).
    term: u64,
}

impl AgentRootState {
    /// Schedules the next attach after the current backoff, then doubles it (up to the maximum).
    fn retry_later(&mut self, myself: &ActorRef<AgentRootMsg>) {
        let cap = if self.running().is_empty() { MAX_BACKOFF } else { BUSY_MAX_BACKOFF };
        self.backoff = self.backoff.min(cap);
        myself.send_after(self.backoff, || AgentRootMsg::Attach);
        self.backoff = (self.backoff * 2).min(cap);
    }

    /// Sends a message on the stream; false if there is none or it is gone.
    async fn send(&self, body: AgentBody) -> bool {
        match &self.outbound {
            Some((_, tx)) => tx.send(AgentMessage { body: Some(body) }).await.is_ok(),
            None => false,
        }
    }

    /// The tasks it holds: running, or finished with a result the coordinator has not released.
    fn running(&self) -> Vec<RunningTask> {
        let held = self.tasks.iter().filter(|(_, t)| t.finished.is_some() || t.supervisor.is_some());
        held.map(|(id, t)| RunningTask { task_id: id.clone(), attempt: t.attempt }).collect()
    }

    /// After (re)attaching: checkpoints kept while away, then results not yet released. What
    /// cannot be sent stays for the next attachment.
    async fn flush(&mut self) {
        let Some((_, tx)) = &self.outbound else { return };
        for slot in self.tasks.values_mut() {
            while let Some(message) = slot.unsent.first() {
                if tx.send(message.clone()).await.is_err() {
                    return;
                }
                slot.unsent.remove(0);
            }
            if let Some(f) = &slot.finished
                && tx.send(AgentMessage { body: Some(AgentBody::Finished(f.clone())) }).await.is_err()
            {
                return;
            }
        }
    }

    async fn assign(&mut self, myself: &ActorRef<AgentRootMsg>, assign: Assign) -> Result<(), ActorProcessingErr> {
        let busy = self.tasks.values().filter(|t| t.finished.is_none()).count() as u32;
        let refusal = match self.tasks.get(&assign.task_id) {
            _ if assign.term < self.term => {
                Some(format!("the assignment is of coordinator term {}, older than term {} it already follows", assign.term, self.term))
            }
            Some(slot) if slot.finished.is_none() => Some(format!("it still runs attempt {} of this task", slot.attempt)),
            _ if busy >= self.config.attach.capacity => Some(format!("it is full ({busy} tasks running)")),
            _ => None,
        };
        if let Some(why) = refusal {
            tracing::warn!(task = %assign.task_id, attempt = assign.attempt, reason = %why, "assignment refused");
            let refused = TaskFinished {
                task_id: assign.task_id.clone(),
                attempt: assign.attempt,
                outcome: TaskOutcome::Refused as i32,
                error: format!("agent {} refused the task: {why}", self.config.attach.agent_id),
                retryable: true,
                ..Default::default()
            };
            self.send(AgentBody::Finished(refused)).await;
            return Ok(());
        }
        self.term = assign.term;
        tracing::info!(task = %assign.task_id, attempt = assign.attempt, term = assign.term, "assignment accepted");
        let cancel = Arc::new(AtomicBool::new(false));
        let config = JobSupervisorConfig {
            assign: assign.clone(),
            source: self.config.source.clone(),
            access: self.config.access.clone(),
            threads: self.config.threads,
            faults: self.config.faults,
            restart_backoff: super::job_supervisor::RESTART_BACKOFF,
            cancel: Arc::clone(&cancel),
            tls: self.config.tls.clone(),
            root: myself.clone(),
            limiter: Arc::clone(&self.limiter),
        };
        let (supervisor, _) = JobSupervisor::spawn_linked(None, JobSupervisor, config, myself.get_cell()).await?;
        let slot = TaskSlot { attempt: assign.attempt, cancel, supervisor: Some(supervisor), finished: None, unsent: Vec::new() };
        self.tasks.insert(assign.task_id, slot);
        Ok(())
    }

    async fn down(&mut self, myself: &ActorRef<AgentRootMsg>, body: CoordinatorBody) -> Result<(), ActorProcessingErr> {
        match body {
            CoordinatorBody::Assign(a) => self.assign(myself, a).await?,
            CoordinatorBody::Cancel(c) => match self.tasks.get(&c.task_id) {
                Some(TaskSlot { cancel, supervisor: Some(s), finished: None, .. }) => {
                    cancel.store(true, Ordering::SeqCst);
                    let _ = s.send_message(JobSupervisorMsg::Cancel { moved: c.moved });
                }
                Some(TaskSlot { finished: Some(f), .. }) => {
                    let f = f.clone();
                    self.send(AgentBody::Finished(f)).await;
                }
                _ => {
                    let unknown = TaskFinished { task_id: c.task_id, outcome: TaskOutcome::Cancelled as i32, ..Default::default() };
                    self.send(AgentBody::Finished(unknown)).await;
                }
            },
            CoordinatorBody::Release(r) => {
                if self.tasks.get(&r.task_id).is_some_and(|t| t.finished.is_some()) {
                    self.tasks.remove(&r.task_id);
                }
            }
            CoordinatorBody::Drill(d) => self.drill(myself, d),
            CoordinatorBody::Rates(r) => {
                tracing::debug!(agent_bps = r.agent_bps, jobs = r.jobs.len(), "bandwidth rates");
                self.limiter.apply(&r);
            }
            CoordinatorBody::Registered(_) => tracing::warn!("unexpected second Registered from the coordinator"),
        }
        Ok(())
    }

    /// Runs a failover (a test into scratch space, or a real one to `restore_to`) off the
    /// actor's thread; its report comes back as `DrillDone`.
    fn drill(&self, myself: &ActorRef<AgentRootMsg>, d: Drill) {
        let Some(root) = self.config.replica_root.clone() else {
            let done = DrillDone {
                drill_id: d.drill_id,
                vm: d.vm,
                error: "this agent keeps no replicas (no --replica-listen)".into(),
                ..Default::default()
            };
            let _ = myself.send_message(AgentRootMsg::DrillDone(done));
            return;
        };
        let (secret, scratch, threads, me) =
            (self.config.access.secret.clone(), self.config.scratch.clone(), self.config.threads, myself.clone());
        tracing::info!(vm = %d.vm, drill = %d.drill_id, restore_to = %d.restore_to, "failover started");
        tokio::spawn(async move {
            let (vm, to) = (d.vm.clone(), d.restore_to.clone());
            let ran = tokio::task::spawn_blocking(move || match to.is_empty() {
                true => crate::failover::drill(&vm, &root, secret.as_ref(), &scratch, threads),
                false => crate::failover::failover_from_root(&vm, &root, secret.as_ref(), std::path::Path::new(&to), threads),
            })
            .await;
            let mut done = DrillDone { drill_id: d.drill_id, vm: d.vm, ..Default::default() };
            match ran {
                Ok(Ok(report)) => {
                    done.ok = true;
                    done.point = report.point;
                    done.bytes = report.restore.bytes;
                    done.seconds = report.rto_seconds;
                }
                Ok(Err(e)) => done.error = e.to_string(),
                Err(e) => done.error = format!("the test failover task failed: {e}"),
            }
            tracing::info!(vm = %done.vm, ok = done.ok, rto_s = done.seconds, error = %done.error, "failover finished");
            let _ = me.send_message(AgentRootMsg::DrillDone(done));
        });
    }

    async fn up(&mut self, task_id: String, body: AgentBody) {
        let checkpoint = matches!(body, AgentBody::Checkpoint(_));
        if let AgentBody::Finished(f) = &body
            && let Some(slot) = self.tasks.get_mut(&task_id)
        {
            slot.finished = Some(f.clone());
        }
        let kept = body.clone();
        if !self.send(body).await
            && checkpoint
            && let Some(slot) = self.tasks.get_mut(&task_id)
        {
            slot.unsent.push(AgentMessage { body: Some(kept) });
        }
    }
}

/// The root actor of an agent.
pub struct AgentRoot;

impl Actor for AgentRoot {
    type Msg = AgentRootMsg;
    type State = AgentRootState;
    type Arguments = AgentRootConfig;

    async fn pre_start(&self, myself: ActorRef<Self::Msg>, config: AgentRootConfig) -> Result<Self::State, ActorProcessingErr> {
        let source = config.source.clone();
        let vms = tokio::task::spawn_blocking(move || inventory_of(&source)).await??;
        tracing::info!(agent = %config.attach.agent_id, vms = vms.len(), source = %config.source, "inventory read");
        myself.send_message(AgentRootMsg::Attach)?;
        Ok(AgentRootState {
            config,
            vms,
            outbound: None,
            generation: 0,
            heartbeat: Duration::from_secs(2),
            sequence: 0,
            backoff: MIN_BACKOFF,
            tasks: HashMap::new(),
            limiter: Limiter::new(),
            term: 0,
        })
    }

    async fn handle(&self, myself: ActorRef<Self::Msg>, message: Self::Msg, state: &mut Self::State) -> Result<(), ActorProcessingErr> {
        match message {
            AgentRootMsg::Attach => {
                state.generation += 1;
                let generation = state.generation;
                let down = myself.clone();
                let on_message = move |body| down.send_message(AgentRootMsg::Down { generation, body }).is_ok();
                let gone = myself.clone();
                let on_end = move |reason| {
                    let _ = gone.send_message(AgentRootMsg::Detached { generation, reason });
                };
                match attach(&state.config.attach, &state.vms, state.running(), on_message, on_end).await {
                    Ok((tx, heartbeat, coordinator)) => {
                        tracing::info!(agent = %state.config.attach.agent_id, %coordinator, "attached");
                        state.outbound = Some((generation, tx));
                        state.heartbeat = heartbeat;
                        state.backoff = MIN_BACKOFF;
                        myself.send_after(heartbeat, move || AgentRootMsg::Heartbeat { generation });
                        state.flush().await;
                    }
                    Err(e) => {
                        tracing::warn!(coordinator = %state.config.attach.coordinator, error = %e, retry_in_ms = state.backoff.as_millis() as u64, "cannot attach");
                        state.retry_later(&myself);
                    }
                }
            }
            AgentRootMsg::Heartbeat { generation } => {
                if state.outbound.as_ref().is_some_and(|(current, _)| *current == generation) {
                    state.sequence += 1;
                    let heartbeat = Heartbeat { sequence: state.sequence, demand: state.limiter.report() };
                    if state.send(AgentBody::Heartbeat(heartbeat)).await {
                        myself.send_after(state.heartbeat, move || AgentRootMsg::Heartbeat { generation });
                    }
                }
            }
            AgentRootMsg::Down { generation, body } => {
                if state.outbound.as_ref().is_some_and(|(current, _)| *current == generation) {
                    state.down(&myself, body).await?;
                }
            }
            AgentRootMsg::Detached { generation, reason } => {
                if state.outbound.as_ref().is_some_and(|(current, _)| *current == generation) {
                    state.outbound = None;
                    tracing::warn!(reason = %reason, retry_in_ms = state.backoff.as_millis() as u64, "detached from the coordinator");
                    state.retry_later(&myself);
                }
            }
            AgentRootMsg::Up { task_id, body } => state.up(task_id, body).await,
            AgentRootMsg::DrillDone(done) => {
                // Unsent (the stream is down): the coordinator fails the drill when the stream ends.
                state.send(AgentBody::DrillDone(done)).await;
            }
            AgentRootMsg::SupervisorStopped { task_id, reason } => {
                let Some(slot) = state.tasks.get(&task_id).filter(|s| s.finished.is_none()) else { return Ok(()) };
                let error =
                    format!("the task's supervisor stopped without a result: {}", reason.unwrap_or_else(|| "no reason given".into()));
                tracing::error!(task = %task_id, error = %error, "task lost");
                let lost = TaskFinished {
                    task_id: task_id.clone(),
                    attempt: slot.attempt,
                    outcome: TaskOutcome::Failed as i32,
                    error,
                    retryable: true,
                    ..Default::default()
                };
                state.up(task_id, AgentBody::Finished(lost)).await;
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
        let reason = error.or(reason);
        if let Some((id, slot)) = state.tasks.iter_mut().find(|(_, t)| t.supervisor.as_ref().is_some_and(|s| s.get_id() == cell.get_id())) {
            slot.supervisor = None;
            // Supervision events overtake ordinary messages: the result may still be queued.
            myself.send_message(AgentRootMsg::SupervisorStopped { task_id: id.clone(), reason })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use hyperexport_coordinator::server::{ServeOptions, serve};
    use hyperexport_coordinator::store::{JobStore, Store};
    use hyperexport_proto::v1::export_service_client::ExportServiceClient;
    use hyperexport_proto::v1::{JobState, SubmitRequest, WatchJobRequest};
    use hyperexport_shared::keys::Secret;

    use super::*;

    /// A coordinator in this process on a free loopback port; stops when the sender is dropped.
    async fn coordinator(dir: &std::path::Path) -> (String, tokio::sync::oneshot::Sender<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = format!("http://{}", listener.local_addr().unwrap());
        let store = Store::Embedded(std::sync::Arc::new(JobStore::open(dir).unwrap()));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let options = ServeOptions { heartbeat: Duration::from_millis(100), tls: None, dr_interval: Duration::from_secs(1) };
        tokio::spawn(serve(listener, store, options, async move {
            let _ = stopped.await;
        }));
        (addr, stop)
    }

    fn config(coordinator: &str, source: PathBuf) -> AgentRootConfig {
        let attach = AttachConfig {
            coordinator: coordinator.into(),
            agent_id: "unit-agent".into(),
            region: "eu".into(),
            site: String::new(),
            labels: HashMap::new(),
            capacity: 1,
            tls: None,
            replica_addr: String::new(),
        };
        let access = TargetAccess { secret: Some(Secret::KeyFile(vec![9; 32])), allow_unencrypted: false };
        AgentRootConfig {
            attach,
            source: AgentSource::Local(source),
            access,
            threads: 2,
            faults: TestFaults::default(),
            tls: None,
            replica_root: None,
            scratch: PathBuf::from("/nonexistent"),
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn an_agent_attaches_runs_its_assignment_and_reports_the_point() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("vms")).unwrap();
        let mut data = vec![0u8; 3 << 20];
        hyperexport_shared::crypto::random_bytes(&mut data);
        std::fs::write(dir.path().join("vms/web.img"), &data).unwrap();
        let (addr, _stop) = coordinator(&dir.path().join("coordinator")).await;
        let (root, _) = Actor::spawn(None, AgentRoot, config(&addr, dir.path().join("vms"))).await.unwrap();

        let mut client = ExportServiceClient::connect(addr.clone()).await.unwrap();
        let target = format!("file://{}", dir.path().join("repo").display());
        let request = SubmitRequest { vms: vec!["web".into()], target, ..Default::default() };
        // The agent attaches in the background: until then the VM is unknown.
        let job = loop {
            match client.submit(request.clone()).await {
                Ok(r) => break r.into_inner().job_id,
                Err(status) if status.code() == tonic::Code::NotFound => tokio::time::sleep(Duration::from_millis(20)).await,
                Err(status) => panic!("{status}"),
            }
        };
        let mut updates = client.watch(WatchJobRequest { job_id: job }).await.unwrap().into_inner();
        let mut last = None;
        while let Some(update) = tokio::time::timeout(Duration::from_secs(60), updates.message()).await.unwrap().unwrap() {
            last = Some(update);
        }
        let last = last.unwrap();
        assert_eq!(last.state(), JobState::Succeeded, "{last:?}");
        let task = &last.tasks[0];
        assert_eq!((task.agent.as_str(), task.bytes_done, task.bytes_total), ("unit-agent", data.len() as u64, data.len() as u64));
        assert_eq!(task.stats.as_ref().unwrap().bytes_read, data.len() as u64);
        assert!(!task.point.is_empty());
        root.stop(None);
    }
}
