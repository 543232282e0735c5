//! The agent's actors (ractor), one per file:
//!
//! ```text
//! AgentRoot                 attached to the coordinator; one JobSupervisor per assigned task
//! └── JobSupervisor         one task (a VM to a target); restarts failed children within a budget
//!     ├── DiskReader        one disk: read, chunk, hash, compress, encrypt, store; checkpoints
//!     ├── Uploader          the target: checks that it holds every chunk, publishes the point
//!     └── Replicator        the published point to a receiver in each region the task names
//! ```

pub mod agent_root;
pub mod disk_reader;
pub mod job_supervisor;
pub mod replicator;
mod task_open;
pub mod uploader;

use ractor::{ActorCell, SupervisionEvent};

/// A child that stopped, as its supervisor sees it.
pub(crate) struct ChildStop {
    /// The child.
    pub cell: ActorCell,
    /// The reason it gave when it stopped normally.
    pub reason: Option<String>,
    /// Its error, when it failed.
    pub error: Option<String>,
}

impl ChildStop {
    /// The stop a supervision event reports; `None` for other events.
    pub fn of(event: SupervisionEvent) -> Option<Self> {
        match event {
            SupervisionEvent::ActorTerminated(cell, _, reason) => Some(ChildStop { cell, reason, error: None }),
            SupervisionEvent::ActorFailed(cell, e) => Some(ChildStop { cell, reason: None, error: Some(e.to_string()) }),
            _ => None,
        }
    }
}
