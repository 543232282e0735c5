//! The scheduler's turn: news from agents, expiry of silent agents, placement, and the commit
//! that makes a turn's changes durable before anyone hears of them.

use foldhash::{HashMap, HashSet, HashSetExt};
use std::time::Instant;

use hyperexport_proto::v1::agent_message::Body as AgentBody;
use hyperexport_proto::v1::coordinator_message::Body as CoordinatorBody;
use hyperexport_proto::v1::{Assign, CoordinatorMessage, Job, JobState, ReleaseTask, Task, TaskOutcome};

use super::{MISSED_HEARTBEATS, Scheduler};
use crate::error::CoordinatorError;
use crate::jobs::{self, is_final, now_ms};
use crate::placement::{Candidate, OpenSlots, choose, eligible, queue_order};
use crate::store::{Batch, EncodedJob};
use crate::task_state::{self, holds_agent, is_active};

impl Scheduler {
    /// Applies a message of agent `agent` about one of its tasks. News of a task the agent no
    /// longer owns (another attempt runs elsewhere) is dropped; a stale result is released.
    pub(super) fn on_agent_message(&mut self, agent: &str, body: AgentBody, received: Instant) {
        let body = match body {
            AgentBody::Heartbeat(h) => {
                self.bandwidth.report(agent, h.demand);
                return;
            }
            other => other,
        };
        let (task_id, attempt) = match &body {
            AgentBody::Progress(p) => (p.task_id.clone(), p.attempt),
            AgentBody::Checkpoint(c) => (c.task_id.clone(), c.attempt),
            AgentBody::Finished(f) => (f.task_id.clone(), f.attempt),
            AgentBody::DrillDone(d) => {
                self.drill_done(agent, d.clone());
                return;
            }
            AgentBody::Heartbeat(_) | AgentBody::Register(_) => return,
        };
        let release =
            |s: &mut Self| s.turn.outbox.push((agent.to_string(), CoordinatorBody::Release(ReleaseTask { task_id: task_id.clone() })));
        let Some((job, i)) = self.task_mut(&task_id) else {
            if matches!(body, AgentBody::Finished(_)) {
                release(self);
            }
            return;
        };
        let task = &mut job.tasks[i];
        if task.agent != agent || task.attempt != attempt || !holds_agent(task) {
            if matches!(body, AgentBody::Finished(_)) {
                release(self);
            }
            return;
        }
        let job_id = job.id.clone();
        match body {
            AgentBody::Progress(mut p) => {
                let replicas = std::mem::take(&mut p.replicas);
                let (point, point_unix_ms, vm, policy) = (p.point.clone(), p.point_unix_ms, task.vm.clone(), job.policy.clone());
                let moved = task_state::apply_progress(task, p);
                if moved {
                    job.set_state(jobs::derive_state(&job.tasks));
                }
                job.updated_unix_ms = now_ms();
                self.changed(&job_id, moved);
                if !replicas.is_empty() {
                    self.replicated(&task_id, &vm, &policy, &point, point_unix_ms, replicas);
                }
            }
            AgentBody::Checkpoint(c) => {
                let Some(disk) = c.disk else { return };
                let state = self.checkpoints.entry(task_id.clone()).or_default();
                if task_state::append_checkpoint(state, disk) {
                    let bytes = task_state::checkpoint_bytes(state);
                    if let Some((job, i)) = self.task_mut(&task_id) {
                        job.tasks[i].checkpoint_bytes = bytes;
                    }
                    self.turn.checkpoints.insert(task_id.clone());
                    self.changed(&job_id, true);
                } else {
                    tracing::warn!(task = %task_id, "checkpoint does not follow the previous one; ignored");
                }
            }
            AgentBody::Finished(f) => {
                let capacity = self.agents.get(agent).map_or(1, |a| a.register.capacity.max(1) as usize);
                if let Some(slots) = self.slot_free.get_mut(agent).filter(|s| s.len() < capacity) {
                    slots.push(received);
                }
                let replicated = (f.outcome() == TaskOutcome::Succeeded && !f.replicas.is_empty())
                    .then(|| (f.point.clone(), f.point_unix_ms, f.replicas.clone()));
                let (job, i) = self.task_mut(&task_id).expect("the task was just found");
                let policy = job.policy.clone();
                let task = &mut job.tasks[i];
                let was_final = is_final(task.state());
                task_state::apply_finished(task, f, agent);
                let settled = is_final(task.state());
                let status = match task.state() {
                    JobState::Succeeded => "succeeded",
                    JobState::Cancelled => "cancelled",
                    _ => "failed",
                };
                let (vm, not_before) = (task.vm.clone(), task.not_before_unix_ms);
                if let Some((point, point_unix_ms, results)) = replicated.filter(|_| !was_final) {
                    self.replicated(&task_id, &vm, &policy, &point, point_unix_ms, results);
                }
                if settled && !was_final {
                    crate::metrics::finished(&self.provider_of(&vm), status);
                } else if !settled && let Some(at) = not_before.checked_sub(now_ms()) {
                    self.ready_since.insert(task_id.clone(), Instant::now() + std::time::Duration::from_millis(at.max(0) as u64));
                }
                let (job, _) = self.task_mut(&task_id).expect("the task was just found");
                job.set_state(jobs::derive_state(&job.tasks));
                job.updated_unix_ms = now_ms();
                if settled {
                    self.replicas_recorded.retain(|(task, _)| *task != task_id);
                    self.checkpoints.remove(&task_id);
                    self.turn.forget.push(task_id.clone());
                }
                self.changed(&job_id, true);
                self.bandwidth.touch();
                release(self);
            }
            AgentBody::Heartbeat(_) | AgentBody::Register(_) | AgentBody::DrillDone(_) => {}
        }
    }

    /// Drops agents that missed their heartbeats, and after a restart's grace period requeues
    /// tasks whose agent never came back.
    pub(super) fn expire(&mut self) {
        let deadline = self.heartbeat * MISSED_HEARTBEATS;
        let now_instant = Instant::now();
        let silent: Vec<String> = self
            .agents
            .iter()
            .filter(|(_, a)| now_instant.saturating_duration_since(a.last_seen) > deadline)
            .map(|(id, _)| id.clone())
            .collect();
        for agent in silent {
            self.unreachable(&agent, "missed heartbeats");
        }
        // On etcd, the watch of the agents' leases says when a detached agent is lost.
        let expired: Vec<String> = match self.leases {
            Some(_) => Vec::new(),
            None => self.detached.iter().filter(|(_, until)| **until <= now_instant).map(|(id, _)| id.clone()).collect(),
        };
        for agent in expired {
            self.lost(&agent, "its lease expired after its stream ended");
        }
        if Instant::now() < self.grace_until {
            return;
        }
        let now = now_ms();
        let mut orphans = Vec::new();
        for job in self.jobs.values_mut() {
            let known = |id: &str| self.agents.contains_key(id) || self.detached.contains_key(id);
            // Only a task that occupies its agent needs its agent looked up.
            let occupies = |t: &Task| is_active(t) || holds_agent(t);
            for t in job.tasks.iter_mut().filter(|t| !t.agent.is_empty() && occupies(t) && !known(&t.agent)) {
                if is_active(t) {
                    orphans.push((t.id.clone(), t.agent.clone()));
                } else if holds_agent(t) {
                    t.finished_unix_ms = now;
                    self.turn.jobs.insert(job.id.clone());
                }
            }
        }
        for (task_id, agent) in orphans {
            self.requeue(
                &task_id,
                format!("agent {agent} did not come back after the coordinator restarted; resuming from the last checkpoint"),
            );
        }
    }

    /// Assigns queued tasks to agents, most urgent first, while agents have free slots.
    pub(super) fn place(&mut self) {
        // Every turn, agents or not: the counts follow the changes of each turn.
        self.loads.sync(&self.jobs, &self.turn.jobs);
        if cfg!(debug_assertions) {
            self.loads.check(&self.jobs);
        }
        if self.agents.is_empty() {
            return;
        }
        let now = now_ms();
        let due = |t: &Task| t.state() == JobState::Pending && t.not_before_unix_ms <= now;
        let loads = &self.loads;
        let mut waiting: Vec<&Job> = self.jobs.values().filter(|j| loads.waiting(&j.id, now)).collect();
        if waiting.is_empty() {
            return;
        }
        // Only agents with a free slot can be chosen.
        let mut candidates: HashMap<&str, Candidate> = loads
            .free()
            .filter_map(|id| self.agents.get_key_value(id))
            .map(|(id, a)| (id.as_str(), Candidate { register: &a.register, running: loads.running(id) }))
            .collect();
        let mut free: u32 = candidates.values().map(|c| c.register.capacity.max(1).saturating_sub(c.running)).sum();
        if free == 0 {
            return;
        }
        // Agents with a free slot: under load few, so a task looks at them rather than at every
        // agent that serves its VM (in ascending order, as placement wants them).
        let mut open = OpenSlots::new(&candidates);
        // Jobs in queue order; within a job, tasks in the order they were named.
        waiting.sort_by(|a, b| queue_order(a).cmp(&queue_order(b)));
        let mut placed = Vec::new();
        // VMs (with a region, for jobs without labels) no agent can take this turn: later tasks
        // for the same VM need not look again.
        let mut full: HashSet<(&str, &str)> = HashSet::new();
        let agents = &self.agents;
        // Whether an agent with a free slot may take tasks of `job` at all (VMs aside): when
        // none may, none of its tasks can be placed this turn (slots only fill up in a turn).
        let takers =
            |job: &Job, open: &OpenSlots| open.for_job(job).iter().any(|id| agents.get(*id).is_some_and(|a| eligible(job, &a.register)));
        'jobs: for job in waiting {
            if !takers(job, &open) {
                continue;
            }
            let mut busy = loads.job_running(&job.id);
            for (index, t) in job.tasks.iter().enumerate().filter(|(_, t)| due(t)) {
                if free == 0 {
                    break 'jobs;
                }
                if job.max_parallel > 0 && busy >= job.max_parallel {
                    continue 'jobs;
                }
                let key = (t.vm.as_str(), job.region.as_str());
                if job.labels.is_empty() && full.contains(&key) {
                    continue;
                }
                // A VM served in one region only can run only there, whatever the job names:
                // the free agents elsewhere need not be looked at (with none free there, none is).
                let (serving, only_region) = self.serving.agents_and_region(&t.vm);
                let slots = match only_region {
                    Some(region) if job.region.is_empty() => open.in_region(region),
                    _ => open.for_job(job),
                };
                let chosen = if slots.len() < serving.len() {
                    choose(
                        job,
                        &candidates,
                        slots
                            .iter()
                            .copied()
                            .filter(|id| agents.get(*id).is_some_and(|a| eligible(job, &a.register) && a.vms.contains(&t.vm))),
                    )
                } else {
                    choose(job, &candidates, serving.iter().map(String::as_str))
                };
                let Some(agent) = chosen else {
                    full.insert(key);
                    continue;
                };
                let c = candidates.get_mut(agent).expect("chosen among candidates");
                c.running += 1;
                busy += 1;
                free -= 1;
                placed.push((job.id.clone(), index, agent.to_string()));
                if c.running >= c.register.capacity.max(1) {
                    open.fill(agent, &c.register.region);
                    if !takers(job, &open) {
                        continue 'jobs;
                    }
                }
            }
        }
        drop(candidates);
        // Placements come job by job: each job's state is derived once, after its last one.
        let mut touched: Vec<String> = Vec::new();
        for (job_id, index, agent) in placed {
            if touched.last() != Some(&job_id) {
                touched.push(job_id.clone());
            }
            let replicate_to = self.jobs.get(&job_id).map(|j| self.replica_targets(&j.replicate_to)).unwrap_or_default();
            let job = self.jobs.get_mut(&job_id).expect("queued job");
            let t = &mut job.tasks[index];
            t.set_state(JobState::Scheduled);
            t.agent = agent.clone();
            t.attempt += 1;
            t.finished_unix_ms = 0;
            t.not_before_unix_ms = 0;
            let assign = Assign {
                task_id: t.id.clone(),
                job_id: job_id.clone(),
                vm: t.vm.clone(),
                target: job.target.clone(),
                attempt: t.attempt,
                resume: self.checkpoints.get(&t.id).cloned(),
                replicate_to,
                retention: job.retention,
                term: self.store.term(),
            };
            tracing::info!(task = %t.id, vm = %t.vm, agent = %agent, attempt = t.attempt, "task assigned");
            let ready = self.ready_since.remove(&t.id);
            if let Some(since) = ready {
                crate::metrics::waited(Instant::now().saturating_duration_since(since));
            }
            // Placeable since both the task and a slot of its agent were there.
            let slots = self.slot_free.get_mut(&agent);
            let slot = slots.and_then(|s| (!s.is_empty()).then(|| s.remove(0)));
            if let Some(start) = ready.into_iter().chain(slot).max() {
                self.turn.placed.push(start);
            }
            self.turn.outbox.push((agent, CoordinatorBody::Assign(assign)));
        }
        for job_id in touched {
            let job = self.jobs.get_mut(&job_id).expect("queued job");
            job.set_state(jobs::derive_state(&job.tasks));
            job.updated_unix_ms = now;
            self.loads.refresh(job);
            self.changed(&job_id, true);
            self.bandwidth.touch();
        }
    }

    /// Sends `body` to `agent` now (callers send only what the store already holds).
    pub(super) fn send(&mut self, agent: &str, body: CoordinatorBody) {
        let failed = self.agents.get(agent).is_some_and(|a| a.tx.try_send(Ok(CoordinatorMessage { body: Some(body) })).is_err());
        if failed {
            // Its tasks are requeued in the next turn's commit.
            self.unreachable(agent, "stream full or closed");
        }
    }

    /// Writes the turn's changes in one transaction, then tells watchers, sends to agents and
    /// answers the API. Jobs with nothing left to track leave memory (they stay in the store).
    /// A failed write is returned: memory then holds changes the store does not, so the
    /// scheduler stops rather than act on them (a restart reloads the store).
    pub(super) async fn commit(&mut self) -> Result<(), CoordinatorError> {
        let turn = std::mem::take(&mut self.turn);
        let jobs: Vec<EncodedJob> = turn.jobs.iter().filter_map(|id| self.jobs.get(id).map(EncodedJob::from)).collect();
        let checkpoints = turn.checkpoints.iter().filter_map(|id| self.checkpoints.get(id).map(|c| (id.clone(), c.clone()))).collect();
        let durable = turn.durable || !turn.replicas.is_empty();
        let batch = Batch { jobs, checkpoints, forget: turn.forget, replicas: turn.replicas, durable };
        if !batch.is_empty() {
            // The scheduler has a thread of its own (see `start`): the write blocks only it, and
            // nothing else could go on in the meantime anyway.
            let started = Instant::now();
            let written = self.store.write(&batch).await;
            crate::metrics::committed(started.elapsed());
            if let Err(e) = written {
                // Nothing of this turn is announced; API callers get the error.
                tracing::error!(error = %e, "store write failed; the scheduler stops");
                let failed = || CoordinatorError::Store { op: "write", detail: e.to_string() };
                for (reply, _) in turn.replies {
                    let _ = reply.send(Err(failed()));
                }
                for (reply, _) in turn.accepted {
                    let _ = reply.send(Err(failed()));
                }
                return Err(e);
            }
        }
        if self.changes.receiver_count() > 0 {
            for job in turn.jobs.iter().filter_map(|id| self.jobs.get(id)) {
                let _ = self.changes.send(job.clone());
            }
        }
        for (agent, body) in turn.outbox {
            self.send(&agent, body);
        }
        let now = Instant::now();
        for start in turn.placed {
            crate::metrics::placed(now.saturating_duration_since(start));
        }
        for (reply, result) in turn.accepted {
            let _ = reply.send(result);
        }
        for (reply, result) in turn.replies {
            let answer = match result {
                Ok(id) => match self.jobs.get(&id) {
                    Some(job) => Ok(job.clone()),
                    None => self.store.get(&id).await.and_then(|j| j.ok_or(CoordinatorError::NotFound(id))),
                },
                Err(e) => Err(e),
            };
            let _ = reply.send(answer);
        }
        // Jobs no longer in memory are finished (cancelling one is a conflict) or unknown.
        for (id, reply) in turn.cancel_lookups {
            let answer = match self.store.get(&id).await {
                Ok(Some(mut job)) => jobs::cancel(&mut job).map(|()| job),
                Ok(None) => Err(CoordinatorError::NotFound(id)),
                Err(e) => Err(e),
            };
            let _ = reply.send(answer);
        }
        if let Some((config, reply)) = turn.bandwidth {
            let stored = self.store.put_bandwidth(config.config.clone()).await.map(|()| config.config.clone());
            if stored.is_ok() {
                tracing::info!(global = %config.config.global, regions = config.config.regions.len(), "bandwidth configuration set");
                self.bandwidth.set_config(config);
            }
            let _ = reply.send(stored);
        }
        let before = self.jobs.len();
        let mut settled = Vec::new();
        // Only a job this turn changed can have just settled.
        for id in &turn.jobs {
            let done = self.jobs.get(id).is_some_and(|j| j.tasks.iter().all(|t| is_final(t.state()) && !holds_agent(t)));
            if let Some(job) = done.then(|| self.jobs.remove(id)).flatten() {
                settled.extend(job.tasks.into_iter().map(|t| t.id));
            }
        }
        // Checkpoints of tasks that ended without a result (cancelled while queued, or whose
        // agent was lost after a cancel) go with their job, in the next turn's commit.
        for task in settled {
            if self.checkpoints.remove(&task).is_some() {
                self.turn.forget.push(task);
            }
        }
        if self.jobs.len() != before {
            let jobs = &self.jobs;
            self.tasks.retain(|_, (job, _)| jobs.contains_key(job));
            let tasks = &self.tasks;
            self.ready_since.retain(|id, _| tasks.contains_key(id));
        }
        // The counts were brought up to date by this turn's placement (jobs that just left
        // memory had nothing queued or running).
        let (queued, active) = self.loads.totals();
        crate::metrics::turn(queued, active, self.agents.len());
        Ok(())
    }
}
