//! Agents coming and going: attaching (taking back the tasks an agent still holds), losing their
//! connection (their lease runs on), and being lost (their tasks go back to the queue).

use foldhash::HashMap;
use std::time::Instant;

use hyperexport_proto::v1::coordinator_message::Body as CoordinatorBody;
use hyperexport_proto::v1::{CancelTask, JobState, Register};
use tonic::Status;

use super::{AgentConn, AgentSender, Scheduler};
use crate::jobs::{self, now_ms};
use crate::task_state::{self, holds_agent, is_active};

impl Scheduler {
    pub(super) fn attached(&mut self, register: Register, connection: u64, tx: AgentSender) {
        let id = register.agent_id.clone();
        tracing::info!(agent = %id, region = %register.region, vms = register.vms.len(), holds = register.running.len(), "agent attached");
        let held: HashMap<String, u32> = register.running.iter().map(|r| (r.task_id.clone(), r.attempt)).collect();
        if let Some(old) = self.agents.remove(&id) {
            self.serving.index(&old.register, false);
        }
        self.serving.index(&register, true);
        let vms = register.vms.iter().map(|v| v.name.clone()).collect();
        self.slot_free.insert(id.clone(), vec![Instant::now(); register.capacity.max(1) as usize]);
        self.loads.attach(&id, register.capacity);
        self.agents.insert(id.clone(), AgentConn { register, vms, connection, tx, last_seen: Instant::now() });
        self.detached.remove(&id);
        self.bandwidth.forget(&id);
        if let Some(leases) = &self.leases {
            leases.attach(&id, prost::Message::encode_to_vec(&self.agents[&id].register));
        }
        // Tasks it holds: take back those still meant for it, cancel the others (a finished one
        // answers with its result, which is then released).
        for (task_id, attempt) in &held {
            let keep = match self.task_mut(task_id) {
                Some((job, i)) => {
                    let t = &mut job.tasks[i];
                    let mine = t.attempt == *attempt
                        && ((is_active(t) && t.agent == id) || (t.state() == JobState::Pending && t.agent.is_empty()));
                    if mine && t.state() == JobState::Pending {
                        t.set_state(JobState::Running);
                        t.agent = id.clone();
                        t.error.clear();
                        let job_id = job.id.clone();
                        self.changed(&job_id, true);
                    }
                    mine
                }
                None => false,
            };
            if !keep {
                self.turn.outbox.push((id.clone(), CoordinatorBody::Cancel(CancelTask { task_id: task_id.clone(), moved: true })));
            }
        }
        // Tasks meant for it that it no longer holds were lost with its previous run; cancelled
        // ones it no longer holds have stopped.
        let now = now_ms();
        let mut lost = Vec::new();
        for job in self.jobs.values_mut() {
            for t in job.tasks.iter_mut().filter(|t| t.agent == id && holds_agent(t) && !held.contains_key(&t.id)) {
                if is_active(t) {
                    lost.push(t.id.clone());
                } else {
                    t.finished_unix_ms = now;
                    self.turn.jobs.insert(job.id.clone());
                }
            }
        }
        for task_id in lost {
            self.requeue(&task_id, format!("agent {id} restarted without the task; resuming from the last checkpoint"));
        }
    }

    pub(super) fn requeue(&mut self, task_id: &str, why: String) {
        self.ready_since.insert(task_id.to_string(), Instant::now());
        if let Some((job, i)) = self.task_mut(task_id) {
            tracing::warn!(task = %task_id, reason = %why, "task requeued");
            task_state::requeue(&mut job.tasks[i], why);
            let state = jobs::derive_state(&job.tasks);
            job.set_state(state);
            let job_id = job.id.clone();
            self.changed(&job_id, true);
        }
    }

    /// Forgets an agent's connection (it is no longer placed on); its tasks stay its own.
    pub(super) fn disconnect(&mut self, agent: &str, reason: &str) {
        self.drills_lost(agent);
        self.bandwidth.forget(agent);
        if let Some(conn) = self.agents.remove(agent) {
            self.serving.index(&conn.register, false);
            self.loads.detach(agent);
            self.slot_free.remove(agent);
            // Ends its stream if it is still open (silent, not gone): it attaches again and is
            // told which of its tasks now run elsewhere.
            let _ = conn.tx.try_send(Err(Status::unavailable(format!("agent {agent} dropped: {reason}; attach again"))));
        }
    }

    /// An attached agent cannot be reached (silent, or its stream full or closed). On etcd its
    /// lease decides: it is detached, and lost once the lease expires. On the embedded store it
    /// is lost now (its lease ran from its last message, which was too long ago or is moot).
    pub(super) fn unreachable(&mut self, agent: &str, reason: &str) {
        if self.leases.is_none() {
            return self.lost(agent, reason);
        }
        tracing::warn!(agent = %agent, reason, "agent unreachable; its tasks wait for it until its etcd lease expires");
        self.disconnect(agent, reason);
        self.detached.insert(agent.to_string(), Instant::now());
    }

    /// An agent is gone (its lease expired, or its stream is unusable): its tasks go back to
    /// the queue and resume elsewhere.
    pub(super) fn lost(&mut self, agent: &str, reason: &str) {
        tracing::warn!(agent = %agent, reason, "agent lost");
        self.disconnect(agent, reason);
        self.detached.remove(agent);
        let now = now_ms();
        let mut requeue = Vec::new();
        for job in self.jobs.values_mut() {
            for t in job.tasks.iter_mut().filter(|t| t.agent == agent) {
                if is_active(t) {
                    requeue.push(t.id.clone());
                } else if holds_agent(t) {
                    t.finished_unix_ms = now;
                    self.turn.jobs.insert(job.id.clone());
                }
            }
        }
        for task_id in requeue {
            self.requeue(&task_id, format!("agent {agent} lost ({reason}); resuming from the last checkpoint"));
        }
    }
}
