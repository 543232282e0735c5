//! Test failovers: the scheduler picks an agent of the region that keeps replicas, asks it for a
//! drill, and records the measured RTO in the VM's replica state when the agent answers.

use hyperexport_proto::v1::coordinator_message::Body as CoordinatorBody;
use hyperexport_proto::v1::{Drill, DrillDone, ReplicaStatus};
use tokio::sync::oneshot;

use super::Scheduler;
use crate::error::{CoordinatorError, Result};
use crate::jobs::{new_id, now_ms};
use crate::store::replica_key;

/// A drill asked of an agent and not answered yet.
pub(super) struct PendingDrill {
    vm: String,
    region: String,
    agent: String,
    /// A real failover: it measures a recovery but is no drill to record.
    real: bool,
    reply: oneshot::Sender<Result<(String, DrillDone)>>,
}

impl Scheduler {
    /// Asks an agent of `region` that runs a replica receiver to test the failover of `vm`, or,
    /// with `restore_to`, to fail it over to that path for real.
    pub(super) fn drill(&mut self, vm: String, region: String, restore_to: String, reply: oneshot::Sender<Result<(String, DrillDone)>>) {
        let target = self.replica_targets(std::slice::from_ref(&region)).pop().filter(|t| !t.agent_id.is_empty());
        let Some(target) = target else {
            let _ = reply.send(Err(CoordinatorError::NoAgent(format!("no live agent in region {region:?} keeps replicas"))));
            return;
        };
        let drill_id = new_id();
        tracing::info!(vm = %vm, region = %region, agent = %target.agent_id, drill = %drill_id, "test failover asked");
        let real = !restore_to.is_empty();
        let drill = Drill { drill_id: drill_id.clone(), vm: vm.clone(), restore_to };
        self.turn.outbox.push((target.agent_id.clone(), CoordinatorBody::Drill(drill)));
        self.drills.insert(drill_id, PendingDrill { vm, region, agent: target.agent_id, real, reply });
    }

    /// An agent's answer to a drill: the RTO goes into the VM's state at that region.
    pub(super) fn drill_done(&mut self, agent: &str, done: DrillDone) {
        let Some(pending) = self.drills.remove(&done.drill_id).filter(|p| p.agent == agent) else { return };
        if !done.ok {
            tracing::warn!(vm = %pending.vm, region = %pending.region, error = %done.error, "failover failed");
            let _ = pending.reply.send(Err(CoordinatorError::Conflict(format!("failover on agent {agent}: {}", done.error))));
            return;
        }
        if pending.real {
            tracing::info!(vm = %pending.vm, region = %pending.region, rto_s = done.seconds, point = %done.point, "failover done");
            let _ = pending.reply.send(Ok((agent.to_string(), done)));
            return;
        }
        let key = replica_key(&pending.vm, &pending.region);
        let mut state = self.replica_states.get(&key).cloned().unwrap_or_else(|| ReplicaStatus {
            vm: pending.vm.clone(),
            region: pending.region.clone(),
            ..Default::default()
        });
        state.last_rto_seconds = done.seconds;
        state.last_rto_gb_per_second = done.bytes as f64 / done.seconds.max(1e-9) / 1e9;
        state.last_rto_unix_ms = now_ms();
        crate::metrics::rto(&pending.vm, &pending.region, done.seconds);
        tracing::info!(vm = %pending.vm, region = %pending.region, rto_s = done.seconds, point = %done.point, "test failover done");
        self.turn.replicas.push(state.clone());
        self.turn.durable = true;
        self.replica_states.insert(key, state);
        let _ = pending.reply.send(Ok((agent.to_string(), done)));
    }

    /// Drills of an agent that went away fail.
    pub(super) fn drills_lost(&mut self, agent: &str) {
        let gone: Vec<String> = self.drills.iter().filter(|(_, p)| p.agent == agent).map(|(id, _)| id.clone()).collect();
        for id in gone {
            if let Some(p) = self.drills.remove(&id) {
                let _ =
                    p.reply.send(Err(CoordinatorError::NoAgent(format!("agent {agent} went away during the test failover of {}", p.vm))));
            }
        }
    }
}
