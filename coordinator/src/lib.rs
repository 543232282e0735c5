//! The HyperExport coordinator: accepts export jobs over gRPC (`hyperexport.v1.ExportService`)
//! and keeps them in an embedded store (redb), every change persisted before it is answered.
//!
//! What is here: submit, get, list, cancel and watch of jobs, durable across restarts. What is
//! not yet: agents, placement and execution (see README.md, "What works today").

pub mod agents;
pub mod error;
pub mod jobs;
pub mod server;
pub mod service;
pub mod store;

pub use error::CoordinatorError;
