//! Bandwidth enforcement on the agent: token buckets on the data path at the rates the
//! coordinator allocates (`limiter.rs`, `bucket.rs`), lowered in adaptive mode when a QUIC path
//! shows congestion (`adaptive.rs`).

pub mod adaptive;
pub mod bucket;
pub mod limiter;

pub use limiter::{Direction, Limiter, PathWatch, Throttle};
