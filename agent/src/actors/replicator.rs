//! `Replicator`: after a task's point is published, sends it to a receiver in each region the
//! assignment names (`replication::sender`), at once, and reports one result per region. A
//! region without a receiver, or a replication that fails, is a failed result, never a failed
//! task: the point exists, and the next run catches the region up.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hyperexport_proto::v1::{ReplicaResult, ReplicaTarget};
use hyperexport_shared::Repository;
use hyperexport_shared::prune::Retention;
use ractor::{Actor, ActorProcessingErr, ActorRef};

use super::job_supervisor::JobSupervisorMsg;
use crate::bandwidth::Throttle;
use crate::replication::sender::{SendOptions, send_point};
use crate::replication::tls::NodeTls;

/// Streams per replication.
const STREAMS: usize = 4;

/// The point and where it goes.
pub struct ReplicatorConfig {
    /// The repository holding the point.
    pub repo: Arc<Repository>,
    /// The point's id.
    pub point: String,
    /// One receiver per region.
    pub targets: Vec<ReplicaTarget>,
    /// This agent's TLS identity (none: every region fails).
    pub tls: Option<NodeTls>,
    /// Set when the task is cancelled: replications still under way give up.
    pub cancel: Arc<AtomicBool>,
    /// What each receiver prunes once the point is published there.
    pub retention: Retention,
    /// Who gets the results.
    pub supervisor: ActorRef<JobSupervisorMsg>,
    /// The task's bandwidth limits.
    pub throttle: Option<Throttle>,
}

/// Messages `Replicator` handles.
pub enum ReplicatorMsg {
    /// Replicate (sent to itself once started).
    Run,
}

/// Replicates one point to its regions.
pub struct Replicator;

/// Replicates to one region.
async fn one(
    repo: Arc<Repository>,
    point: String,
    target: ReplicaTarget,
    tls: Option<NodeTls>,
    cancel: Arc<AtomicBool>,
    retention: Retention,
    throttle: Option<Throttle>,
) -> ReplicaResult {
    let failed = |error: String| ReplicaResult { region: target.region.clone(), ok: false, error, ..Default::default() };
    let Some(tls) = tls else { return failed("this agent has no --tls, so it cannot replicate".into()) };
    if target.addr.is_empty() {
        return failed(format!("no live agent in region {:?} runs a replica receiver", target.region));
    }
    let Ok(addr) = target.addr.parse::<std::net::SocketAddr>() else {
        return failed(format!("receiver address {:?} is not IP:PORT", target.addr));
    };
    let r = Arc::clone(&repo);
    let Ok(Ok(recovery_point)) = tokio::task::spawn_blocking(move || r.resolve_point(&point)).await else {
        return failed("the published point cannot be read back".into());
    };
    let options = SendOptions { streams: STREAMS, server_name: addr.ip().to_string(), progress: None, retention, throttle };
    let cancelled = async {
        while !cancel.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::select! {
        sent = send_point(repo, recovery_point, addr, &tls, &options) => match sent {
            Ok(report) => {
                tracing::info!(region = %target.region, receiver = %addr, chunks_sent = report.chunks_sent, wire_bytes = report.wire_bytes, "point replicated");
                ReplicaResult {
                    region: target.region.clone(),
                    ok: true,
                    error: String::new(),
                    chunks_sent: report.chunks_sent as u64,
                    wire_bytes: report.wire_bytes,
                    seconds: report.seconds,
                }
            }
            Err(e) => {
                tracing::warn!(region = %target.region, receiver = %addr, error = %e, "replication failed");
                failed(e.to_string())
            }
        },
        () = cancelled => failed("cancelled".into()),
    }
}

impl Actor for Replicator {
    type Msg = ReplicatorMsg;
    type State = Option<ReplicatorConfig>;
    type Arguments = ReplicatorConfig;

    async fn pre_start(&self, myself: ActorRef<Self::Msg>, config: ReplicatorConfig) -> Result<Self::State, ActorProcessingErr> {
        myself.send_message(ReplicatorMsg::Run)?;
        Ok(Some(config))
    }

    async fn handle(&self, myself: ActorRef<Self::Msg>, message: Self::Msg, state: &mut Self::State) -> Result<(), ActorProcessingErr> {
        let ReplicatorMsg::Run = message;
        let Some(c) = state.take() else { return Ok(()) };
        // All regions at once; each reports as soon as it is done.
        let handles: Vec<_> = c
            .targets
            .iter()
            .map(|t| {
                let run = one(
                    Arc::clone(&c.repo),
                    c.point.clone(),
                    t.clone(),
                    c.tls.clone(),
                    Arc::clone(&c.cancel),
                    c.retention,
                    c.throttle.clone(),
                );
                let supervisor = c.supervisor.clone();
                tokio::spawn(async move {
                    let result = run.await;
                    let _ = supervisor.send_message(JobSupervisorMsg::RegionReplicated { result: result.clone() });
                    result
                })
            })
            .collect();
        let mut results = Vec::with_capacity(handles.len());
        for (h, t) in handles.into_iter().zip(&c.targets) {
            let failed = |e: tokio::task::JoinError| ReplicaResult {
                region: t.region.clone(),
                error: format!("replication task failed: {e}"),
                ..Default::default()
            };
            results.push(h.await.unwrap_or_else(failed));
        }
        c.supervisor.send_message(JobSupervisorMsg::Replicated { results })?;
        myself.stop(None);
        Ok(())
    }
}
