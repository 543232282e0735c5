//! The agent's actors (ractor), one per file:
//!
//! ```text
//! AgentRoot                 attached to the coordinator; one JobSupervisor per assigned task
//! └── JobSupervisor         one task (a VM to a target); restarts failed children within a budget
//!     ├── DiskReader        one disk: read, chunk, hash, compress, encrypt, store; checkpoints
//!     └── Uploader          the target: checks that it holds every chunk, publishes the point
//! ```

pub mod agent_root;
pub mod disk_reader;
pub mod job_supervisor;
pub mod uploader;
