//! HyperExport's common library: everything that both ends of a transfer must agree on.
//!
//! The on-disk formats are documented byte by byte in `docs/FORMAT.md`; the modules here are their
//! only implementation.

pub mod chunk;
pub mod compress;
pub mod config;
pub mod crypto;
pub mod dates;
pub mod direct_io;
pub mod error;
pub mod glob;
pub mod keys;
pub mod lock;
pub mod ovf;
pub mod point;
pub mod prune;
pub mod replica;
pub mod repo;
pub mod storage;
pub mod timetable;
pub mod units;
pub mod wire;

pub use chunk::ChunkId;
pub use error::RepoError;
pub use repo::Repository;
