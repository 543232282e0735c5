//! Disaster recovery in the coordinator: replication policies, the runner that exports and
//! replicates each covered VM on its interval, and the RPO of every VM at every target region.
//!
//! ```text
//! policies_v1 (store) ─┐
//!                      ├─ runner (every interval): submit due jobs with replicate_to ─► scheduler
//! replicas_v1 (store) ─┘   evaluate: RPO per VM and region ─► hyperexport_rpo_seconds, breaches
//!      ▲
//!      └─ scheduler: TaskFinished.replicas of a job's task ─► ReplicaStatus per region
//! ```

pub mod cron;
pub mod evaluate;
pub mod runner;
pub mod service;
pub mod tables;
