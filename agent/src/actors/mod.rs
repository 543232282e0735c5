//! The agent's actors (ractor), one per file. Today: `AgentRoot`, which keeps the agent attached
//! to its coordinator. The per-task `JobSupervisor`, `DiskReader` and `Uploader` come with job
//! execution.

pub mod agent_root;
