//! The scheduler: one tokio task owns the coordinator's live state (unfinished jobs, checkpoints,
//! attached agents) and is the only writer of jobs. Everything reaches it as an [`Event`].
//!
//! Each turn takes every waiting event, expires silent agents, places queued tasks, then writes
//! all changes in one store transaction; only after that commit are assignments and cancels sent
//! to agents, watchers told and API calls answered. So nothing is acted on before it is durable,
//! and a turn under load batches many changes into one commit.

use foldhash::{HashMap, HashMapExt, HashSet};
use std::time::{Duration, Instant};

use hyperexport_proto::v1::coordinator_message::Body as CoordinatorBody;
use hyperexport_proto::v1::{BandwidthConfig, CancelTask, Job, JobState, Register, ReplicaStatus, ReplicaTarget, TaskCheckpointState};
use tokio::sync::{broadcast, mpsc, oneshot, watch};

use crate::bandwidth::config::Compiled;
use crate::bandwidth::plan::Plan;
use crate::error::{CoordinatorError, Result};
use crate::jobs::{self, is_final, now_ms};
use crate::placement::eligible;
use crate::server::stopped;
use crate::store::Store;
use crate::store::leases::{AgentLeases, agent_ttl};
use crate::task_state::{holds_agent, is_active};

mod agents;
mod api;
mod bandwidth;
mod drills;
mod loads;
mod serving;
#[cfg(test)]
mod tests;
mod turn;

pub use api::{AgentSender, Event, SchedulerHandle};

/// Heartbeats an agent may miss before it is taken for dead.
pub const MISSED_HEARTBEATS: u32 = 3;
/// After a start (or a takeover on etcd), how long beyond [`MISSED_HEARTBEATS`] heartbeats the
/// tasks of agents that have not attached again are left to them: an agent holding tasks
/// retries at least every second (`BUSY_MAX_BACKOFF` in the agent), and running a task again
/// elsewhere while its first agent finishes it would make a second point.
pub const RESTART_GRACE: Duration = Duration::from_secs(2);
/// Job changes a slow watcher may fall behind before it is told to resubscribe.
const WATCH_BACKLOG: usize = 1024;
/// Events handled in one turn at most, so that a flood still commits and answers regularly.
const MAX_EVENTS_PER_TURN: usize = 4096;
/// Time spent taking events in one turn at most: a burst of submissions (each admitting all its
/// tasks) is placed and committed in slices, so that the first jobs are not held up by the last.
const HANDLE_BUDGET: Duration = Duration::from_millis(2);
/// How long past its time the bandwidth allocation may wait for queued events to be handled.
const ALLOCATION_MAX_DEFER: Duration = Duration::from_millis(200);
/// Longest time between two turns when no event comes (bandwidth allocation runs on turns).
const MAX_IDLE_TURN: Duration = Duration::from_millis(250);

struct AgentConn {
    register: Register,
    /// The names of the VMs it serves.
    vms: HashSet<String>,
    connection: u64,
    tx: AgentSender,
    last_seen: Instant,
}

/// What a turn changed, written and sent at its end.
#[derive(Default)]
struct Turn {
    jobs: HashSet<String>,
    checkpoints: HashSet<String>,
    forget: Vec<String>,
    replicas: Vec<ReplicaStatus>,
    durable: bool,
    outbox: Vec<(String, CoordinatorBody)>,
    replies: Vec<(oneshot::Sender<Result<Job>>, Result<String>)>,
    /// Submissions to answer with the job's id (or why it was refused).
    accepted: Vec<(oneshot::Sender<Result<String>>, Result<String>)>,
    /// Tasks of the jobs accepted in this turn.
    admitted: usize,
    /// Since when each task assigned this turn could have been placed.
    placed: Vec<Instant>,
    /// Cancels of jobs no longer in memory: answered from the store after the commit.
    cancel_lookups: Vec<(String, oneshot::Sender<Result<Job>>)>,
    /// A bandwidth configuration to persist, then put in force and answer.
    bandwidth: Option<(Compiled, oneshot::Sender<Result<BandwidthConfig>>)>,
}

/// The scheduler's state.
pub struct Scheduler {
    store: Store,
    heartbeat: Duration,
    /// Until then, tasks of agents that have not reattached since a restart are left alone.
    grace_until: Instant,
    jobs: HashMap<String, Job>,
    /// Task id → (job id, position in the job).
    tasks: HashMap<String, (String, usize)>,
    checkpoints: HashMap<String, TaskCheckpointState>,
    agents: HashMap<String, AgentConn>,
    changes: broadcast::Sender<Job>,
    turn: Turn,
    /// Since when each queued task could be placed (for the placement latency metric).
    ready_since: HashMap<String, Instant>,
    /// The live agents serving each VM, and their regions.
    serving: serving::Serving,
    /// Per agent, since when each of its free slots has been free (for the placement latency).
    slot_free: HashMap<String, Vec<Instant>>,
    /// Where each VM stands at each region it replicates to, by `store::replica_key`.
    replica_states: HashMap<String, ReplicaStatus>,
    /// (task, region) replication results already recorded (progress reports them early, the
    /// task's result again).
    replicas_recorded: HashSet<(String, String)>,
    /// Test failovers under way, by drill id.
    drills: HashMap<String, drills::PendingDrill>,
    /// Bandwidth budgets: configuration, demand, rates sent.
    bandwidth: Plan,
    /// Agents whose stream ended, with the end of their lease: their tasks stay theirs until
    /// then (they may attach again, to this coordinator or to the next leader). On etcd, the
    /// instant is not used: the agent's etcd lease decides.
    detached: HashMap<String, Instant>,
    /// On etcd, the agents' leases (`None` on the embedded store, whose leases are the
    /// instants in `detached`).
    leases: Option<AgentLeases>,
    /// Tasks occupying each agent and queued in each job, counted again only for changed jobs.
    loads: loads::Loads,
}

/// Loads the unfinished jobs and checkpoints from `store` and starts the scheduler; it runs until
/// `stopping` turns true, or until a store write fails (the returned receiver then gets the
/// error).
pub async fn start(
    store: Store,
    heartbeat: Duration,
    stopping: watch::Receiver<bool>,
) -> Result<(SchedulerHandle, oneshot::Receiver<Result<()>>)> {
    let mut jobs = HashMap::new();
    let mut tasks = HashMap::new();
    for job in store.list().await?.into_iter().filter(|j| j.tasks.iter().any(|t| !is_final(t.state()) || holds_agent(t))) {
        for (i, t) in job.tasks.iter().enumerate() {
            tasks.insert(t.id.clone(), (job.id.clone(), i));
        }
        jobs.insert(job.id.clone(), job);
    }
    let checkpoints = store.checkpoints().await?.into_iter().collect();
    let replica_states = store.replicas().await?.into_iter().map(|r| (crate::store::replica_key(&r.vm, &r.region), r)).collect();
    let bandwidth = Plan::new(store.bandwidth().await?);
    tracing::info!(unfinished_jobs = jobs.len(), "scheduler loaded");
    let (events, mut rx) = mpsc::unbounded_channel();
    let changes = broadcast::channel(WATCH_BACKLOG).0;
    let mut detached = HashMap::new();
    let leases = match &store {
        Store::Embedded(_) => None,
        Store::Etcd(s) => {
            let ttl = agent_ttl(s.ttl(), heartbeat, MISSED_HEARTBEATS, RESTART_GRACE);
            let tx = events.clone();
            let (leases, alive) = AgentLeases::start((**s).clone(), ttl, move |agent| drop(tx.send(Event::LeaseExpired(agent)))).await?;
            // Agents attached to the previous leader whose leases still run keep their tasks
            // until they attach here or their leases expire.
            detached.extend(alive.into_iter().map(|a| (a, Instant::now())));
            Some(leases)
        }
    };
    let mut scheduler = Scheduler {
        store,
        heartbeat,
        grace_until: Instant::now() + heartbeat * MISSED_HEARTBEATS + RESTART_GRACE,
        jobs,
        tasks,
        checkpoints,
        agents: HashMap::new(),
        changes: changes.clone(),
        turn: Turn::default(),
        ready_since: HashMap::new(),
        serving: Default::default(),
        slot_free: HashMap::new(),
        replica_states,
        replicas_recorded: HashSet::default(),
        drills: HashMap::new(),
        bandwidth,
        detached,
        leases,
        loads: loads::Loads::default(),
    };
    // The loop has an OS thread of its own: under load the runtime's workers are busy with a
    // thousand agent streams, and the one task every placement waits for must not queue behind
    // them (measured with scripts/scale-bench.sh; see docs/PERFORMANCE.md). Its I/O, timers and
    // store writes still run on the runtime.
    let runtime = tokio::runtime::Handle::current();
    let (done, ended) = oneshot::channel();
    let run = async move {
        let stop = stopped(stopping);
        tokio::pin!(stop);
        let mut tick = tokio::time::interval((heartbeat / 2).min(MAX_IDLE_TURN));
        loop {
            // A pending bandwidth allocation wakes the loop when it falls due.
            let allocation = scheduler.bandwidth.next_due().unwrap_or_else(Instant::now);
            tokio::select! {
                event = rx.recv() => match event {
                    Some(e) => scheduler.handle(e),
                    None => break,
                },
                _ = tick.tick() => {}
                _ = tokio::time::sleep_until(allocation.into()) => {}
                () = &mut stop => break,
            }
            let started = Instant::now();
            let mut events = 1;
            // Once the jobs submitted in this turn have more tasks than agents have free slots,
            // later submissions could not be placed in it anyway: the turn places what it can
            // and commits, and they come in the next one.
            let open = scheduler.loads.open_slots();
            while events < MAX_EVENTS_PER_TURN
                && started.elapsed() < HANDLE_BUDGET
                && (scheduler.turn.admitted == 0 || scheduler.turn.admitted < open)
            {
                match rx.try_recv() {
                    Ok(e) => scheduler.handle(e),
                    Err(_) => break,
                }
                events += 1;
            }
            let handled = started.elapsed();
            scheduler.expire();
            scheduler.place();
            let placed = started.elapsed() - handled;
            let jobs = scheduler.turn.jobs.len();
            scheduler.commit().await?;
            // While events wait (a burst of results and the placements they free), the
            // allocation waits for them, up to `ALLOCATION_MAX_DEFER` past its time: they are
            // what placement latency is made of, and the agents' rates stay in force meanwhile.
            if rx.is_empty() || scheduler.bandwidth.overdue(ALLOCATION_MAX_DEFER) {
                scheduler.allocate_bandwidth();
            }
            let took = started.elapsed();
            tracing::debug!(
                events,
                jobs,
                handle_us = handled.as_micros() as u64,
                place_us = placed.as_micros() as u64,
                turn_us = took.as_micros() as u64,
                "scheduler turn"
            );
        }
        Ok(())
    };
    std::thread::Builder::new()
        .name("hx-scheduler".into())
        .spawn(move || {
            let _ = done.send(runtime.block_on(run));
        })
        .map_err(|e| CoordinatorError::Serve(format!("cannot start the scheduler thread: {e}")))?;
    Ok((SchedulerHandle { events, changes, heartbeat }, ended))
}

impl Scheduler {
    /// The provider of `vm` as an agent serving it reports it.
    fn provider_of(&self, vm: &str) -> String {
        let agent = self.serving.agents(vm).first().and_then(|id| self.agents.get(id));
        agent.and_then(|a| a.register.vms.iter().find(|v| v.name == vm)).map(|v| v.provider.clone()).unwrap_or_default()
    }

    /// For each region, the receiver of the live agent with the smallest id there that runs one
    /// (an empty address when none does: the agent reports that region's replication failed).
    fn replica_targets(&self, regions: &[String]) -> Vec<ReplicaTarget> {
        regions
            .iter()
            .map(|region| {
                let receiver = self
                    .agents
                    .values()
                    .map(|a| &a.register)
                    .filter(|r| r.region == *region && !r.replica_addr.is_empty())
                    .min_by(|a, b| a.agent_id.cmp(&b.agent_id));
                ReplicaTarget {
                    region: region.clone(),
                    addr: receiver.map(|r| r.replica_addr.clone()).unwrap_or_default(),
                    agent_id: receiver.map(|r| r.agent_id.clone()).unwrap_or_default(),
                }
            })
            .collect()
    }

    /// Records how the replication of a task's point went, region by region.
    fn replicated(
        &mut self,
        task: &str,
        vm: &str,
        policy: &str,
        point: &str,
        point_unix_ms: i64,
        results: Vec<hyperexport_proto::v1::ReplicaResult>,
    ) {
        let now = now_ms();
        for r in results {
            if !self.replicas_recorded.insert((task.to_string(), r.region.clone())) {
                continue;
            }
            let key = crate::store::replica_key(vm, &r.region);
            let mut state = self.replica_states.get(&key).cloned().unwrap_or_else(|| ReplicaStatus {
                vm: vm.to_string(),
                region: r.region.clone(),
                ..Default::default()
            });
            state.policy = policy.to_string();
            state.last_attempt_unix_ms = now;
            if r.ok {
                state.point = point.to_string();
                state.point_unix_ms = point_unix_ms;
                state.last_error.clear();
            } else {
                tracing::warn!(vm, region = %r.region, error = %r.error, "replication of a point failed");
                state.last_error = r.error;
            }
            self.turn.replicas.push(state.clone());
            self.replica_states.insert(key, state);
        }
    }

    /// The live agents serving `vm`.
    fn registers_serving(&self, vm: &str) -> impl Iterator<Item = &Register> {
        self.serving.agents(vm).iter().filter_map(|id| self.agents.get(id)).map(|a| &a.register)
    }

    fn task_mut(&mut self, task_id: &str) -> Option<(&mut Job, usize)> {
        let (job_id, index) = self.tasks.get(task_id)?;
        let index = *index;
        self.jobs.get_mut(job_id).map(|j| (j, index))
    }

    fn changed(&mut self, job_id: &str, durable: bool) {
        self.turn.jobs.insert(job_id.to_string());
        self.turn.durable |= durable;
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Submit(job, received, reply) => {
                let result = self.admit(&job).map(|()| job.id.clone());
                if result.is_ok() {
                    for (i, t) in job.tasks.iter().enumerate() {
                        self.tasks.insert(t.id.clone(), (job.id.clone(), i));
                        self.ready_since.insert(t.id.clone(), received);
                    }
                    tracing::info!(job = %job.id, tasks = job.tasks.len(), target = %job.target, "job accepted");
                    self.turn.admitted += job.tasks.len();
                    self.changed(&job.id, true);
                    self.jobs.insert(job.id.clone(), job);
                }
                self.turn.accepted.push((reply, result));
            }
            Event::Cancel(id, reply) => {
                if self.jobs.contains_key(&id) {
                    let result = self.cancel(&id).map(|()| id);
                    self.turn.replies.push((reply, result));
                } else {
                    self.turn.cancel_lookups.push((id, reply));
                }
            }
            Event::Attached { register, connection, tx } => self.attached(register, connection, tx),
            Event::FromAgent { agent, connection, body, received } => {
                match self.agents.get_mut(&agent) {
                    Some(a) if a.connection == connection => a.last_seen = Instant::now(),
                    _ => return,
                }
                if let Some(leases) = &self.leases {
                    leases.beat(&agent);
                }
                self.on_agent_message(&agent, body, received);
            }
            Event::Detached { agent, connection, reason } => {
                if let Some(a) = self.agents.get(&agent).filter(|a| a.connection == connection) {
                    // Its lease runs from its last message: three heartbeats to come back.
                    let until = a.last_seen + self.heartbeat * MISSED_HEARTBEATS;
                    tracing::warn!(agent = %agent, reason, "agent detached; its tasks wait for it until its lease expires");
                    self.disconnect(&agent, reason);
                    self.detached.insert(agent, until);
                }
            }
            Event::Drill { vm, region, restore_to, reply } => self.drill(vm, region, restore_to, reply),
            Event::SetBandwidth(config, reply) => {
                // A later one in the same turn wins; the earlier caller is told it was replaced.
                if let Some((_, earlier)) = self.turn.bandwidth.replace((config, reply)) {
                    let _ = earlier.send(Err(CoordinatorError::Conflict("replaced by a later bandwidth configuration".into())));
                }
            }
            Event::BandwidthConfig(reply) => {
                let _ = reply.send(self.bandwidth.config().config.clone());
            }
            Event::BandwidthTree(reply) => {
                let _ = reply.send(self.bandwidth.tree());
            }
            Event::LeaseExpired(agent) => match (self.agents.get(&agent), &self.leases) {
                // Heard from since (its lease ran out while it was silent): a new lease.
                (Some(a), Some(leases)) => leases.attach(&agent, prost::Message::encode_to_vec(&a.register)),
                _ => self.lost(&agent, "its etcd lease expired"),
            },
            Event::LiveAgents(reply) => {
                let _ = reply.send(self.agents.values().map(|a| a.register.clone()).collect());
            }
        }
    }

    /// Checks that every VM of a new job can be placed somewhere now.
    fn admit(&self, job: &Job) -> Result<()> {
        // A job without a class is `standard` (weight 1 if the configuration has no such class);
        // a class named must exist.
        if !job.class.is_empty() && !self.bandwidth.config().has_class(&job.class) {
            let mut known: Vec<&String> = self.bandwidth.config().config.classes.keys().collect();
            known.sort();
            return Err(CoordinatorError::Invalid(format!("class {:?} is not a bandwidth class (classes: {known:?})", job.class)));
        }
        if !job.region.is_empty() && !self.agents.values().any(|a| a.register.region == job.region) {
            return Err(CoordinatorError::NoAgent(format!("no live agent in region {:?}", job.region)));
        }
        for task in &job.tasks {
            if self.registers_serving(&task.vm).any(|r| eligible(job, r)) {
                continue;
            }
            let serving: Vec<&Register> = self.registers_serving(&task.vm).collect();
            if serving.is_empty() {
                return Err(CoordinatorError::UnknownVm(task.vm.clone()));
            }
            {
                let regions: HashSet<&str> = serving.iter().map(|r| r.region.as_str()).collect();
                return Err(CoordinatorError::NoAgent(format!(
                    "VM {:?} is served only by agents that do not match the job's region/labels (its regions: {})",
                    task.vm,
                    regions.into_iter().collect::<Vec<_>>().join(", ")
                )));
            }
        }
        Ok(())
    }

    /// Cancels a job in memory (the others are finished or unknown: see `commit`).
    fn cancel(&mut self, id: &str) -> Result<()> {
        let Some(job) = self.jobs.get_mut(id) else {
            return Err(CoordinatorError::NotFound(id.to_string()));
        };
        let holders: Vec<(String, String)> =
            job.tasks.iter().filter(|t| is_active(t) && !t.agent.is_empty()).map(|t| (t.agent.clone(), t.id.clone())).collect();
        let unfinished: Vec<String> = job.tasks.iter().filter(|t| !is_final(t.state())).map(|t| t.vm.clone()).collect();
        jobs::cancel(job)?;
        let now = now_ms();
        for task in job.tasks.iter_mut().filter(|t| t.state() == JobState::Cancelled && t.finished_unix_ms == 0) {
            if !holders.iter().any(|(_, id)| *id == task.id) || !self.agents.contains_key(&task.agent) {
                task.finished_unix_ms = now;
            }
        }
        for (agent, task_id) in holders {
            self.turn.outbox.push((agent, CoordinatorBody::Cancel(CancelTask { task_id, moved: false })));
        }
        for vm in unfinished {
            crate::metrics::finished(&self.provider_of(&vm), "cancelled");
        }
        tracing::info!(job = %id, "job cancelled");
        self.changed(id, true);
        Ok(())
    }
}
