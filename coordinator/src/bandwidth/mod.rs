//! Bandwidth budgets in the coordinator.
//!
//! ```text
//! BandwidthService.SetConfig ─► validate (config.rs) ─► bandwidth_v1 (store) ─► scheduler
//! agents' heartbeats: JobDemand per job ────────────────────────────────────────► scheduler
//! scheduler, every interval and when work starts or ends:
//!     caps at now (timetables) + demand per (job, agent) ─► allocate.rs ─► Rates per agent
//! ```

pub mod allocate;
pub mod config;
pub mod plan;
pub mod service;
