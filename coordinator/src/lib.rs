//! The HyperExport coordinator: accepts export jobs over gRPC (`hyperexport.v1.ExportService`),
//! keeps them in an embedded store (redb), and shards their tasks across the agents attached to
//! it (`AgentService`), every change persisted before it is acted on.

pub mod agents;
pub mod bandwidth;
pub mod dr;
pub mod error;
pub mod follower;
pub mod jobs;
pub mod metrics;
pub mod placement;
pub mod scheduler;
pub mod server;
pub mod service;
pub mod store;
pub mod task_state;

pub use error::CoordinatorError;
