//! `DiskReader`: exports one disk of a task (read, cut into chunks, hash, compress, encrypt,
//! store) on the blocking pool, reporting checkpoints and the finished disk to its
//! `JobSupervisor`. A failure ends the actor with the error; the supervisor decides whether to
//! start a new one from the last checkpoint.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use ractor::{Actor, ActorProcessingErr, ActorRef};

use super::job_supervisor::{JobSupervisorMsg, STOPPED_BY_CANCEL};
use crate::AgentError;
use crate::checkpoint::{DiskControl, DiskResume};
use crate::export::ExportRun;
use crate::task_progress::TaskCounters;

/// One disk to export.
pub struct DiskReaderConfig {
    /// The task's export (repository locked, previous point read).
    pub run: Arc<ExportRun>,
    /// Which disk of the VM.
    pub index: usize,
    /// Where an earlier attempt got to.
    pub resume: Option<DiskResume>,
    /// Set by the supervisor to stop.
    pub cancel: Arc<AtomicBool>,
    /// The task's progress counters.
    pub counters: Arc<TaskCounters>,
    /// Who gets the checkpoints and the result.
    pub supervisor: ActorRef<JobSupervisorMsg>,
}

/// Messages `DiskReader` handles.
pub enum DiskReaderMsg {
    /// Export the disk (sent to itself once started).
    Run,
}

/// Exports one disk.
pub struct DiskReader;

impl Actor for DiskReader {
    type Msg = DiskReaderMsg;
    type State = Option<DiskReaderConfig>;
    type Arguments = DiskReaderConfig;

    async fn pre_start(&self, myself: ActorRef<Self::Msg>, config: DiskReaderConfig) -> Result<Self::State, ActorProcessingErr> {
        myself.send_message(DiskReaderMsg::Run)?;
        Ok(Some(config))
    }

    async fn handle(&self, myself: ActorRef<Self::Msg>, message: Self::Msg, state: &mut Self::State) -> Result<(), ActorProcessingErr> {
        let DiskReaderMsg::Run = message;
        let Some(config) = state.take() else { return Ok(()) };
        let index = config.index;
        let supervisor = config.supervisor.clone();
        let outcome = tokio::task::spawn_blocking(move || {
            let to_supervisor = config.supervisor.clone();
            let sink = move |checkpoint| {
                let _ = to_supervisor.send_message(JobSupervisorMsg::Checkpoint { index, checkpoint });
            };
            let control = DiskControl { cancel: &config.cancel, resume: config.resume.clone(), checkpoint: Some(&sink) };
            config.run.disk(index, config.counters.as_ref(), &control)
        })
        .await?;
        match outcome {
            Ok(result) => {
                supervisor.send_message(JobSupervisorMsg::DiskDone { index, result: Box::new(result) })?;
                myself.stop(None);
                Ok(())
            }
            Err(AgentError::Cancelled) => {
                myself.stop(Some(STOPPED_BY_CANCEL.into()));
                Ok(())
            }
            Err(e) => Err(Box::new(e)),
        }
    }
}
