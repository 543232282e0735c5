//! `Uploader`: delivers a task's recovery point to one target. For a `file://` target the chunks
//! are already in the repository (the disk readers store them): the uploader checks that every
//! chunk the point names is there after a sync, then publishes the point atomically. Replication
//! targets in other regions (QUIC) will be uploaders of their own.

use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef};

use super::job_supervisor::JobSupervisorMsg;
use crate::AgentError;
use crate::export::{DiskResult, ExportRun};
use crate::task_progress::TaskCounters;

/// The point to deliver.
pub struct UploaderConfig {
    /// The task's export.
    pub run: Arc<ExportRun>,
    /// Every disk, in order.
    pub disks: Vec<DiskResult>,
    /// The task's progress counters (for notes).
    pub counters: Arc<TaskCounters>,
    /// Who gets the result.
    pub supervisor: ActorRef<JobSupervisorMsg>,
}

/// Messages `Uploader` handles.
pub enum UploaderMsg {
    /// Check and publish (sent to itself once started).
    Publish,
}

/// Delivers a point to its target.
pub struct Uploader;

impl Actor for Uploader {
    type Msg = UploaderMsg;
    type State = Option<UploaderConfig>;
    type Arguments = UploaderConfig;

    async fn pre_start(&self, myself: ActorRef<Self::Msg>, config: UploaderConfig) -> Result<Self::State, ActorProcessingErr> {
        myself.send_message(UploaderMsg::Publish)?;
        Ok(Some(config))
    }

    async fn handle(&self, myself: ActorRef<Self::Msg>, message: Self::Msg, state: &mut Self::State) -> Result<(), ActorProcessingErr> {
        let UploaderMsg::Publish = message;
        let Some(config) = state.take() else { return Ok(()) };
        let supervisor = config.supervisor.clone();
        let report = tokio::task::spawn_blocking(move || {
            config.run.repo().sync()?;
            for (record, _) in &config.disks {
                if let Some(missing) = record.chunks.iter().flatten().find(|id| !config.run.repo().has_chunk(id)) {
                    return Err(AgentError::Invalid(format!("disk {} names chunk {missing} that the target does not hold", record.name)));
                }
            }
            config.run.publish(config.disks, config.counters.as_ref())
        })
        .await??;
        supervisor.send_message(JobSupervisorMsg::Published { report: Box::new(report) })?;
        myself.stop(None);
        Ok(())
    }
}
