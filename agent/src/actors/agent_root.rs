//! `AgentRoot`: attaches the agent to its coordinator (`AgentService.Attach`), registers it with
//! its region, labels and inventory, sends heartbeats at the interval the coordinator asks for,
//! and reattaches with exponential backoff whenever the stream fails.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hyperexport_proto::v1::agent_message::Body as AgentBody;
use hyperexport_proto::v1::agent_service_client::AgentServiceClient;
use hyperexport_proto::v1::coordinator_message::Body as CoordinatorBody;
use hyperexport_proto::v1::{AgentMessage, Heartbeat, Register, Vm};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::source::inventory;

/// First wait before reattaching; doubled after each failure up to [`MAX_BACKOFF`].
pub const MIN_BACKOFF: Duration = Duration::from_millis(200);
/// Longest wait between attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// What an agent is and where its coordinator is.
#[derive(Debug, Clone)]
pub struct AgentRootConfig {
    /// `http://HOST:PORT` of the coordinator.
    pub coordinator: String,
    /// Stable id of this agent.
    pub agent_id: String,
    /// Region it runs in.
    pub region: String,
    /// Site within the region.
    pub site: String,
    /// Free-form labels for placement.
    pub labels: HashMap<String, String>,
    /// Folder of local VMs it serves.
    pub source: PathBuf,
    /// Tasks it runs at once.
    pub capacity: u32,
}

/// Messages `AgentRoot` handles.
#[derive(Debug)]
pub enum AgentRootMsg {
    /// Try to attach now.
    Attach,
    /// Time for the heartbeat of attachment `generation`.
    Heartbeat { generation: u64 },
    /// The stream of attachment `generation` ended.
    Detached { generation: u64, reason: String },
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
}

impl AgentRootState {
    /// Schedules the next attach after the current backoff, then doubles it (up to the maximum).
    fn retry_later(&mut self, myself: &ActorRef<AgentRootMsg>) {
        myself.send_after(self.backoff, || AgentRootMsg::Attach);
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
    }
}

/// The root actor of an agent.
pub struct AgentRoot;

/// Lists the VMs under the source folder; entries that are not VMs are logged and left out.
fn inventory_of(source: &Path) -> Result<Vec<Vm>, ActorProcessingErr> {
    let mut vms = Vec::new();
    for (path, summary) in inventory::scan(source)? {
        match summary {
            Ok(s) => {
                vms.push(Vm { name: s.name, provider: "local".into(), kind: s.kind.into(), disks: s.disks, power_state: "unknown".into() })
            }
            Err(e) => tracing::warn!(path = %path.display(), error = %e, "not a VM, left out of the inventory"),
        }
    }
    Ok(vms)
}

impl Actor for AgentRoot {
    type Msg = AgentRootMsg;
    type State = AgentRootState;
    type Arguments = AgentRootConfig;

    async fn pre_start(&self, myself: ActorRef<Self::Msg>, config: AgentRootConfig) -> Result<Self::State, ActorProcessingErr> {
        let vms = inventory_of(&config.source)?;
        tracing::info!(agent = %config.agent_id, vms = vms.len(), source = %config.source.display(), "inventory read");
        myself.send_message(AgentRootMsg::Attach)?;
        Ok(AgentRootState {
            config,
            vms,
            outbound: None,
            generation: 0,
            heartbeat: Duration::from_secs(2),
            sequence: 0,
            backoff: MIN_BACKOFF,
        })
    }

    async fn handle(&self, myself: ActorRef<Self::Msg>, message: Self::Msg, state: &mut Self::State) -> Result<(), ActorProcessingErr> {
        match message {
            AgentRootMsg::Attach => {
                state.generation += 1;
                let generation = state.generation;
                match attach(&state.config, &state.vms, generation, myself.clone()).await {
                    Ok((tx, heartbeat)) => {
                        tracing::info!(agent = %state.config.agent_id, coordinator = %state.config.coordinator, "attached");
                        state.outbound = Some((generation, tx));
                        state.heartbeat = heartbeat;
                        state.backoff = MIN_BACKOFF;
                        myself.send_after(heartbeat, move || AgentRootMsg::Heartbeat { generation });
                    }
                    Err(e) => {
                        tracing::warn!(coordinator = %state.config.coordinator, error = %e, retry_in_ms = state.backoff.as_millis() as u64, "cannot attach");
                        state.retry_later(&myself);
                    }
                }
            }
            AgentRootMsg::Heartbeat { generation } => {
                if let Some((current, tx)) = &state.outbound
                    && *current == generation
                {
                    state.sequence += 1;
                    let beat = AgentMessage { body: Some(AgentBody::Heartbeat(Heartbeat { sequence: state.sequence })) };
                    if tx.send(beat).await.is_ok() {
                        myself.send_after(state.heartbeat, move || AgentRootMsg::Heartbeat { generation });
                    }
                }
            }
            AgentRootMsg::Detached { generation, reason } => {
                if state.outbound.as_ref().is_some_and(|(current, _)| *current == generation) {
                    state.outbound = None;
                    tracing::warn!(reason = %reason, retry_in_ms = state.backoff.as_millis() as u64, "detached from the coordinator");
                    state.retry_later(&myself);
                }
            }
        }
        Ok(())
    }
}

/// Opens the stream, registers, and waits for `Registered`; a task then watches the stream and
/// tells `myself` when it ends.
async fn attach(
    config: &AgentRootConfig,
    vms: &[Vm],
    generation: u64,
    myself: ActorRef<AgentRootMsg>,
) -> Result<(mpsc::Sender<AgentMessage>, Duration), ActorProcessingErr> {
    let mut client = AgentServiceClient::connect(config.coordinator.clone()).await?;
    let (tx, rx) = mpsc::channel(16);
    let register = Register {
        agent_id: config.agent_id.clone(),
        region: config.region.clone(),
        site: config.site.clone(),
        labels: config.labels.clone(),
        providers: vec!["local".into()],
        capacity: config.capacity,
        vms: vms.to_vec(),
    };
    tx.send(AgentMessage { body: Some(AgentBody::Register(register)) }).await?;
    let mut inbound = client.attach(ReceiverStream::new(rx)).await?.into_inner();
    let heartbeat = match inbound.message().await? {
        Some(m) => match m.body {
            Some(CoordinatorBody::Registered(r)) => Duration::from_millis(r.heartbeat_interval_ms.max(50) as u64),
            None => return Err("the coordinator answered Register with an empty message".into()),
        },
        None => return Err("the coordinator closed the stream after Register".into()),
    };
    tokio::spawn(async move {
        let reason = loop {
            match inbound.message().await {
                Ok(Some(_)) => {}
                Ok(None) => break "the coordinator closed the stream".to_string(),
                Err(status) => break format!("stream failed: {}", status.message()),
            }
        };
        let _ = myself.send_message(AgentRootMsg::Detached { generation, reason });
    });
    Ok((tx, heartbeat))
}
