//! The agent's side of `AgentService.Attach`: open the stream, register, wait for `Registered`,
//! then hand every message from the coordinator to a callback until the stream ends.

use std::collections::HashMap;
use std::time::Duration;

use hyperexport_proto::v1::agent_message::Body as AgentBody;
use hyperexport_proto::v1::agent_service_client::AgentServiceClient;
use hyperexport_proto::v1::coordinator_message::Body as CoordinatorBody;
use hyperexport_proto::v1::{AgentMessage, Register, RunningTask, Vm};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::source::{AgentSource, inventory};

/// Messages that may wait on the way to the coordinator (progress and checkpoints of several
/// tasks between two network round trips).
const OUTBOUND_QUEUE: usize = 256;
/// How long connecting to one coordinator may take before the next is tried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Who the agent is and where its coordinator is.
#[derive(Debug, Clone)]
pub struct AttachConfig {
    /// `http://HOST:PORT` of the coordinator; several separated by commas (an HA group: the one
    /// that leads accepts the stream, the others refuse connections).
    pub coordinator: String,
    /// Stable id of this agent.
    pub agent_id: String,
    /// Region it runs in.
    pub region: String,
    /// Site within the region.
    pub site: String,
    /// Free-form labels for placement.
    pub labels: HashMap<String, String>,
    /// Tasks it runs at once.
    pub capacity: u32,
    /// Mutual TLS to the coordinator (an `https://` URL), or none.
    pub tls: Option<tonic::transport::ClientTlsConfig>,
    /// Where its replica receiver listens (empty: none).
    pub replica_addr: String,
}

/// Lists the VMs of the source: those under a local folder (entries that are not VMs are logged
/// and left out), or a vSphere server's. Blocks while vSphere answers.
pub fn inventory_of(source: &AgentSource) -> Result<Vec<Vm>, crate::AgentError> {
    let dir = match source {
        AgentSource::Local(dir) => dir,
        AgentSource::Vsphere(connection) => {
            let vms = connection.inventory(&crate::vsphere::inventory::Filter::default())?;
            return Ok(vms
                .into_iter()
                .map(|v| Vm {
                    name: v.name,
                    provider: "vsphere".into(),
                    kind: "vm".into(),
                    disks: v.disks.len() as u32,
                    power_state: v.power_state,
                })
                .collect());
        }
    };
    let mut vms = Vec::new();
    for (path, summary) in inventory::scan(dir)? {
        match summary {
            Ok(s) => {
                vms.push(Vm { name: s.name, provider: "local".into(), kind: s.kind.into(), disks: s.disks, power_state: "unknown".into() })
            }
            Err(e) => tracing::warn!(path = %path.display(), error = %e, "not a VM, left out of the inventory"),
        }
    }
    Ok(vms)
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Opens the stream, registers, and waits for `Registered`, with the coordinators of the
/// configuration in turn until one accepts. A task then passes each message from the
/// coordinator to `on_message` (which returns false once nobody listens) and calls `on_end`
/// with the reason when the stream ends. Returns the sender for messages up, the heartbeat
/// interval the coordinator asked for, and the coordinator's URL.
pub async fn attach(
    config: &AttachConfig,
    vms: &[Vm],
    running: Vec<RunningTask>,
    on_message: impl Fn(CoordinatorBody) -> bool + Send + 'static,
    on_end: impl FnOnce(String) + Send + 'static,
) -> Result<(mpsc::Sender<AgentMessage>, Duration, String), BoxError> {
    let mut failures = Vec::new();
    for url in config.coordinator.split(',').map(str::trim).filter(|u| !u.is_empty()) {
        match open(url, config, vms, running.clone()).await {
            Ok((tx, inbound, heartbeat)) => {
                read_stream(inbound, on_message, on_end);
                return Ok((tx, heartbeat, url.to_string()));
            }
            Err(e) => failures.push(format!("{url}: {e}")),
        }
    }
    Err(failures.join("; ").into())
}

/// Registers on one coordinator.
async fn open(
    url: &str,
    config: &AttachConfig,
    vms: &[Vm],
    running: Vec<RunningTask>,
) -> Result<(mpsc::Sender<AgentMessage>, tonic::Streaming<hyperexport_proto::v1::CoordinatorMessage>, Duration), BoxError> {
    let mut endpoint = tonic::transport::Endpoint::from_shared(url.to_string())?.connect_timeout(CONNECT_TIMEOUT);
    if let Some(tls) = &config.tls {
        endpoint = endpoint.tls_config(tls.clone())?;
    }
    let mut client = AgentServiceClient::new(endpoint.connect().await?);
    let (tx, rx) = mpsc::channel(OUTBOUND_QUEUE);
    let register = Register {
        agent_id: config.agent_id.clone(),
        region: config.region.clone(),
        site: config.site.clone(),
        labels: config.labels.clone(),
        providers: vec!["local".into()],
        capacity: config.capacity,
        vms: vms.to_vec(),
        running,
        replica_addr: config.replica_addr.clone(),
    };
    tx.send(AgentMessage { body: Some(AgentBody::Register(register)) }).await?;
    let mut inbound = client.attach(ReceiverStream::new(rx)).await?.into_inner();
    let heartbeat = match inbound.message().await? {
        Some(m) => match m.body {
            Some(CoordinatorBody::Registered(r)) => Duration::from_millis(r.heartbeat_interval_ms.max(50) as u64),
            _ => return Err("the coordinator answered Register with something else than Registered".into()),
        },
        None => return Err("the coordinator closed the stream after Register".into()),
    };
    Ok((tx, inbound, heartbeat))
}

/// Hands every message of the stream to `on_message` until it ends, then calls `on_end`.
fn read_stream(
    mut inbound: tonic::Streaming<hyperexport_proto::v1::CoordinatorMessage>,
    on_message: impl Fn(CoordinatorBody) -> bool + Send + 'static,
    on_end: impl FnOnce(String) + Send + 'static,
) {
    tokio::spawn(async move {
        let reason = loop {
            match inbound.message().await {
                Ok(Some(m)) => {
                    if let Some(body) = m.body
                        && !on_message(body)
                    {
                        break "the agent is stopping".to_string();
                    }
                }
                Ok(None) => break "the coordinator closed the stream".to_string(),
                Err(status) => break format!("stream failed: {}", status.message()),
            }
        };
        on_end(reason);
    });
}
