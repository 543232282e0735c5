//! Agents' streams (`AgentService.Attach`) and the inventory they report
//! (`InventoryService.ListVms`). A stream's messages go to the scheduler, which keeps the live
//! agents: one that misses three heartbeats, or whose stream ends, is no longer listed.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use hyperexport_proto::v1::agent_message::Body as AgentBody;
use hyperexport_proto::v1::agent_service_server::AgentService;
use hyperexport_proto::v1::coordinator_message::Body as CoordinatorBody;
use hyperexport_proto::v1::inventory_service_server::InventoryService;
use hyperexport_proto::v1::{AgentMessage, CoordinatorMessage, ListVmsRequest, ListVmsResponse, Register, Registered, VmLocation};
use hyperexport_shared::glob::glob_match;
use tokio::sync::{mpsc, watch};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::error::{CoordinatorError, Result};
use crate::scheduler::{Event, SchedulerHandle};
use crate::server::stopped;

/// Messages to an agent that may wait to be sent (assignments, cancels, releases).
const AGENT_QUEUE: usize = 1024;

fn validate(r: &Register) -> Result<()> {
    let plain = |what: &str, v: &str| {
        if v.is_empty() || v.len() > 128 || v.chars().any(char::is_control) {
            Err(CoordinatorError::Invalid(format!("{what} {v:?} must be 1-128 printable characters")))
        } else {
            Ok(())
        }
    };
    plain("agent_id", &r.agent_id)?;
    plain("region", &r.region)?;
    if !(1..=MAX_CAPACITY).contains(&r.capacity) {
        return Err(CoordinatorError::Invalid(format!("capacity {} is outside 1-{MAX_CAPACITY}", r.capacity)));
    }
    if r.vms.len() > MAX_VMS_PER_AGENT || r.running.len() > MAX_CAPACITY as usize * 4 {
        return Err(CoordinatorError::Invalid(format!(
            "{} VMs and {} held tasks: at most {MAX_VMS_PER_AGENT} and {}",
            r.vms.len(),
            r.running.len(),
            MAX_CAPACITY * 4
        )));
    }
    Ok(())
}

/// Most tasks one agent may run at once.
pub const MAX_CAPACITY: u32 = 1024;
/// Most VMs one agent may report.
pub const MAX_VMS_PER_AGENT: usize = 100_000;

/// `AgentService` and `InventoryService`, backed by the scheduler.
#[derive(Clone)]
pub struct AgentApi {
    scheduler: SchedulerHandle,
    next_connection: Arc<AtomicU64>,
    /// Turns true when the server shuts down: agent streams end so the server can stop.
    stopping: watch::Receiver<bool>,
}

impl AgentApi {
    /// The agent services over `scheduler`.
    pub fn new(scheduler: SchedulerHandle, stopping: watch::Receiver<bool>) -> Self {
        AgentApi { scheduler, next_connection: Arc::new(AtomicU64::new(0)), stopping }
    }
}

type AttachStream = Pin<Box<dyn Stream<Item = Result<CoordinatorMessage, Status>> + Send>>;

#[tonic::async_trait]
impl AgentService for AgentApi {
    type AttachStream = AttachStream;

    async fn attach(&self, request: Request<Streaming<AgentMessage>>) -> Result<Response<AttachStream>, Status> {
        let mut inbound = request.into_inner();
        let register = match inbound.message().await? {
            Some(AgentMessage { body: Some(AgentBody::Register(r)) }) => r,
            _ => return Err(CoordinatorError::Invalid("an agent's first message must be Register".into()).into()),
        };
        validate(&register)?;
        let connection = self.next_connection.fetch_add(1, Ordering::Relaxed);
        let agent = register.agent_id.clone();
        let (tx, rx) = mpsc::channel(AGENT_QUEUE);
        let registered = Registered { heartbeat_interval_ms: self.scheduler.heartbeat.as_millis() as u32 };
        tx.send(Ok(CoordinatorMessage { body: Some(CoordinatorBody::Registered(registered)) }))
            .await
            .map_err(|_| Status::cancelled("agent went away"))?;
        self.scheduler.send(Event::Attached { register, connection, tx: tx.clone() });
        let scheduler = self.scheduler.clone();
        let stop = stopped(self.stopping.clone());
        tokio::spawn(async move {
            tokio::pin!(stop);
            // Everything after Register goes to the scheduler; a second Register is a protocol
            // error.
            let reason = loop {
                let message = tokio::select! {
                    m = inbound.message() => m,
                    () = &mut stop => break "coordinator stopping",
                };
                match message {
                    Ok(Some(AgentMessage { body: Some(AgentBody::Register(_)) | None })) => {
                        let _ = tx.send(Err(Status::invalid_argument("unexpected message after Register"))).await;
                        break "protocol error";
                    }
                    Ok(Some(AgentMessage { body: Some(body) })) => {
                        scheduler.send(Event::FromAgent { agent: agent.clone(), connection, body, received: std::time::Instant::now() });
                    }
                    Ok(None) => break "stream closed",
                    Err(_) => break "stream broken",
                }
            };
            scheduler.send(Event::Detached { agent, connection, reason });
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

#[tonic::async_trait]
impl InventoryService for AgentApi {
    async fn list_vms(&self, request: Request<ListVmsRequest>) -> Result<Response<ListVmsResponse>, Status> {
        let q = request.into_inner();
        let mut vms: Vec<VmLocation> = self
            .scheduler
            .live_agents()
            .await?
            .into_iter()
            .filter(|a| q.region.is_empty() || a.region == q.region)
            .flat_map(|a| {
                a.vms.into_iter().map(move |vm| VmLocation {
                    vm: Some(vm),
                    agent_id: a.agent_id.clone(),
                    region: a.region.clone(),
                    site: a.site.clone(),
                })
            })
            .filter(|l| {
                let vm = l.vm.as_ref().expect("built with a VM");
                glob_match(&q.name_glob, &vm.name)
                    && (q.provider.is_empty() || vm.provider == q.provider)
                    && (q.power_state.is_empty() || vm.power_state == q.power_state)
            })
            .collect();
        vms.sort_by(|a, b| (&a.vm.as_ref().map(|v| &v.name), &a.agent_id).cmp(&(&b.vm.as_ref().map(|v| &v.name), &b.agent_id)));
        Ok(Response::new(ListVmsResponse { vms }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registrations_are_validated() {
        let ok = Register { agent_id: "a1".into(), region: "eu".into(), capacity: 2, ..Default::default() };
        assert!(validate(&ok).is_ok());
        assert!(validate(&Register { region: String::new(), ..ok.clone() }).is_err());
        assert!(validate(&Register { capacity: 0, ..ok.clone() }).is_err());
        let huge = validate(&Register { capacity: u32::MAX, ..ok.clone() }).unwrap_err().to_string();
        assert!(huge.contains("capacity 4294967295 is outside 1-1024"), "{huge}");
        assert!(validate(&Register { agent_id: "x\n".into(), ..ok }).is_err());
    }
}
