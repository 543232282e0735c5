//! The HyperExport agent: reads VMs from their sources, cuts their disks into chunks, stores them
//! in a repository, and verifies and restores recovery points.
//!
//! The data path (`export`, `verify`, `restore`) runs on plain OS threads through
//! [`parallel::ordered_pipeline`]: hashing, compression and encryption never run on an async
//! reactor, and memory is bounded by the pipeline's window whatever the disk size.

pub mod actors;
pub mod attach;
pub mod bandwidth;
pub mod buffer_pool;
pub mod checkpoint;
pub mod digest;
pub mod error;
pub mod export;
pub mod failover;
pub mod faults;
pub mod metrics;
pub mod ova;
pub mod ova_stream;
pub mod parallel;
pub mod progress;
pub mod qemu;
pub mod read_back;
pub mod repair;
pub mod replication;
pub mod restore;
pub mod resume;
pub mod source;
pub mod storage;
pub mod target;
pub mod task_progress;
pub mod verify;
pub mod vmdk_stream;
pub mod vsphere;

pub use error::AgentError;
