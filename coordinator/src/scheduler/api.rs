//! How the API and the agent streams talk to the scheduler: the events it acts on, and the
//! handle that sends them and awaits the answers.

use std::time::{Duration, Instant};

use hyperexport_proto::v1::agent_message::Body as AgentBody;
use hyperexport_proto::v1::{BandwidthConfig, BandwidthTree, CoordinatorMessage, DrillDone, Job, Register};
use tokio::sync::{broadcast, mpsc, oneshot};
use tonic::Status;

use crate::bandwidth::config::Compiled;
use crate::error::{CoordinatorError, Result};

/// The sending half of an agent's stream.
pub type AgentSender = mpsc::Sender<Result<CoordinatorMessage, Status>>;

/// What the scheduler acts on.
pub enum Event {
    /// A validated new job, received by the API at the instant given; answered with its id
    /// once it is stored.
    Submit(Job, Instant, oneshot::Sender<Result<String>>),
    /// Cancel a job.
    Cancel(String, oneshot::Sender<Result<Job>>),
    /// An agent registered on a new stream (`Registered` already sent).
    Attached { register: Register, connection: u64, tx: AgentSender },
    /// A message from an agent's stream, read at `received`.
    FromAgent { agent: String, connection: u64, body: AgentBody, received: Instant },
    /// An agent's stream ended.
    Detached { agent: String, connection: u64, reason: &'static str },
    /// The registrations of the live agents.
    LiveAgents(oneshot::Sender<Vec<Register>>),
    /// Run a test failover of a VM on an agent of a region that keeps replicas.
    /// With `restore_to`, a real failover to that path on the agent's host.
    Drill { vm: String, region: String, restore_to: String, reply: oneshot::Sender<Result<(String, DrillDone)>> },
    /// Persist and apply a validated bandwidth configuration.
    SetBandwidth(Compiled, oneshot::Sender<Result<BandwidthConfig>>),
    /// The bandwidth configuration in force.
    BandwidthConfig(oneshot::Sender<BandwidthConfig>),
    /// The last bandwidth allocation.
    BandwidthTree(oneshot::Sender<BandwidthTree>),
    /// An agent's etcd lease expired (the watch of `agents/` saw its key deleted).
    LeaseExpired(String),
}

/// How the API and the agent streams talk to the scheduler.
#[derive(Clone)]
pub struct SchedulerHandle {
    pub(super) events: mpsc::UnboundedSender<Event>,
    pub(super) changes: broadcast::Sender<Job>,
    /// The agents' heartbeat interval.
    pub heartbeat: Duration,
}

impl SchedulerHandle {
    /// Hands an event to the scheduler.
    pub fn send(&self, event: Event) {
        let _ = self.events.send(event);
    }

    async fn ask<T>(&self, event: impl FnOnce(oneshot::Sender<T>) -> Event) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        self.send(event(tx));
        rx.await.map_err(|_| CoordinatorError::Stopping)
    }

    /// Accepts a job once it is stored; returns its id.
    pub async fn submit(&self, job: Job) -> Result<String> {
        let received = Instant::now();
        self.ask(|tx| Event::Submit(job, received, tx)).await?
    }

    /// Cancels a job; returns it as stored.
    pub async fn cancel(&self, id: String) -> Result<Job> {
        self.ask(|tx| Event::Cancel(id, tx)).await?
    }

    /// The live agents.
    pub async fn live_agents(&self) -> Result<Vec<Register>> {
        self.ask(Event::LiveAgents).await
    }

    /// Runs a failover of `vm` in `region` (a test when `restore_to` is empty); answers with the
    /// agent that ran it and its report once it is done.
    pub async fn drill(&self, vm: String, region: String, restore_to: String) -> Result<(String, DrillDone)> {
        self.ask(|reply| Event::Drill { vm, region, restore_to, reply }).await?
    }

    /// Persists and applies a bandwidth configuration; returns it as stored.
    pub async fn set_bandwidth(&self, config: Compiled) -> Result<BandwidthConfig> {
        self.ask(|reply| Event::SetBandwidth(config, reply)).await?
    }

    /// The bandwidth configuration in force.
    pub async fn bandwidth_config(&self) -> Result<BandwidthConfig> {
        self.ask(Event::BandwidthConfig).await
    }

    /// The last bandwidth allocation.
    pub async fn bandwidth_tree(&self) -> Result<BandwidthTree> {
        self.ask(Event::BandwidthTree).await
    }

    /// Every job change from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Job> {
        self.changes.subscribe()
    }
}
