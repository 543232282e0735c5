//! Live agents: `AgentService.Attach` (register, then heartbeats) and the inventory they report
//! (`InventoryService.ListVms`). An agent that misses three heartbeats, or whose stream ends, is
//! no longer listed.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyperexport_proto::v1::agent_message::Body as AgentBody;
use hyperexport_proto::v1::agent_service_server::AgentService;
use hyperexport_proto::v1::coordinator_message::Body as CoordinatorBody;
use hyperexport_proto::v1::inventory_service_server::InventoryService;
use hyperexport_proto::v1::{AgentMessage, CoordinatorMessage, ListVmsRequest, ListVmsResponse, Register, Registered, VmLocation};
use tokio::sync::{mpsc, watch};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::error::{CoordinatorError, Result};
use crate::server::stopped;

/// Heartbeats an agent may miss before it is taken for dead.
const MISSED_HEARTBEATS: u32 = 3;

struct Entry {
    register: Register,
    last_seen: Instant,
    /// Which stream registered it (a reconnect replaces the entry; the old stream's end must
    /// not remove the new one).
    connection: u64,
}

/// The agents attached to this coordinator.
pub struct Agents {
    entries: Mutex<HashMap<String, Entry>>,
    heartbeat: Duration,
    next_connection: std::sync::atomic::AtomicU64,
    /// Turns true when the server shuts down: agent streams end so the server can stop.
    stopping: watch::Receiver<bool>,
}

impl Agents {
    /// A registry asking agents for a heartbeat every `heartbeat`.
    pub fn new(heartbeat: Duration, stopping: watch::Receiver<bool>) -> Arc<Self> {
        Arc::new(Agents { entries: Mutex::new(HashMap::new()), heartbeat, next_connection: 0.into(), stopping })
    }

    fn live(&self) -> Vec<Register> {
        let deadline = self.heartbeat * MISSED_HEARTBEATS;
        let entries = self.entries.lock().expect("agents lock");
        entries.values().filter(|e| e.last_seen.elapsed() <= deadline).map(|e| e.register.clone()).collect()
    }
}

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
    Ok(())
}

/// Shell-style match: `*` any run, `?` any one character; an empty pattern matches everything.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    if pattern.is_empty() {
        return true;
    }
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    let (mut pi, mut ni, mut star, mut mark) = (0, 0, None, 0);
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ni;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ni = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// `AgentService` and `InventoryService` over the registry.
#[derive(Clone)]
pub struct AgentApi(pub Arc<Agents>);

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
        let agents = Arc::clone(&self.0);
        let connection = agents.next_connection.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let id = register.agent_id.clone();
        tracing::info!(agent = %id, region = %register.region, vms = register.vms.len(), "agent attached");
        agents.entries.lock().expect("agents lock").insert(id.clone(), Entry { register, last_seen: Instant::now(), connection });
        let (tx, rx) = mpsc::channel(16);
        let registered = Registered { heartbeat_interval_ms: agents.heartbeat.as_millis() as u32 };
        tx.send(Ok(CoordinatorMessage { body: Some(CoordinatorBody::Registered(registered)) }))
            .await
            .map_err(|_| Status::cancelled("agent went away"))?;
        let stop = stopped(agents.stopping.clone());
        tokio::spawn(async move {
            tokio::pin!(stop);
            // Heartbeats until the stream ends or the server stops; a second Register is a
            // protocol error.
            let reason = loop {
                let message = tokio::select! {
                    m = inbound.message() => m,
                    () = &mut stop => break "coordinator stopping",
                };
                match message {
                    Ok(Some(AgentMessage { body: Some(AgentBody::Heartbeat(_)) })) => {
                        if let Some(e) = agents.entries.lock().expect("agents lock").get_mut(&id).filter(|e| e.connection == connection) {
                            e.last_seen = Instant::now();
                        }
                    }
                    Ok(Some(_)) => {
                        let _ = tx.send(Err(Status::invalid_argument("unexpected message after Register"))).await;
                        break "protocol error";
                    }
                    Ok(None) => break "stream closed",
                    Err(_) => break "stream broken",
                }
            };
            let mut entries = agents.entries.lock().expect("agents lock");
            if entries.get(&id).is_some_and(|e| e.connection == connection) {
                entries.remove(&id);
            }
            tracing::info!(agent = %id, reason, "agent detached");
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

#[tonic::async_trait]
impl InventoryService for AgentApi {
    async fn list_vms(&self, request: Request<ListVmsRequest>) -> Result<Response<ListVmsResponse>, Status> {
        let q = request.into_inner();
        let mut vms: Vec<VmLocation> = self
            .0
            .live()
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
    fn globs() {
        assert!(glob_match("", "anything"));
        assert!(glob_match("web*", "web01"));
        assert!(glob_match("*01", "web01"));
        assert!(glob_match("w?b*", "web01"));
        assert!(glob_match("*", ""));
        assert!(!glob_match("web?", "web01"));
        assert!(!glob_match("db*", "web01"));
        assert!(glob_match("a*b*c", "axxbyyc"));
        assert!(!glob_match("a*b*c", "axxbyy"));
    }

    #[test]
    fn registrations_are_validated() {
        let ok = Register { agent_id: "a1".into(), region: "eu".into(), ..Default::default() };
        assert!(validate(&ok).is_ok());
        assert!(validate(&Register { region: String::new(), ..ok.clone() }).is_err());
        assert!(validate(&Register { agent_id: "x\n".into(), ..ok }).is_err());
    }
}
