//! The agent's metrics, declared once (see DESIGN §8): exports by outcome, their duration, bytes
//! read from sources and the read rate, and the exports running now.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use metrics::{Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};

/// Finished exports by provider and status (`succeeded`, `failed`, `cancelled`).
pub const EXPORTS_TOTAL: &str = "hyperexport_exports_total";
/// Wall time of successful exports.
pub const EXPORT_DURATION_SECONDS: &str = "hyperexport_export_duration_seconds";
/// Bytes read from sources.
pub const EXPORT_BYTES_TOTAL: &str = "hyperexport_export_bytes_total";
/// Bytes read from sources per second, over the last sampling interval.
pub const DOWNLOAD_SPEED: &str = "hyperexport_download_speed_bytes_per_second";
/// Exports running on this agent.
pub const ACTIVE_EXPORTS: &str = "hyperexport_active_exports";

/// Chunk bytes (as stored: compressed, encrypted) moved by replication, by direction
/// (`sent`, `received`, and `fetched`: served from a replica to repair or restore elsewhere).
pub const REPLICATION_BYTES_TOTAL: &str = "hyperexport_replication_bytes_total";
/// Recovery points replicated, by direction.
pub const REPLICATION_POINTS_TOTAL: &str = "hyperexport_replication_points_total";
/// Replication peers or streams refused, by reason (`handshake`: no certificate from the
/// cluster CA, or not TLS at all; `protocol`: malformed or unexpected frames).
pub const REPLICATION_REFUSED_TOTAL: &str = "hyperexport_replication_refused_total";
/// The agent's bandwidth rate now, for all its data streams (+Inf: no limit).
pub const BANDWIDTH_RATE: &str = "hyperexport_agent_bandwidth_rate_bytes_per_second";
/// Bandwidth allocated to this agent's jobs, by QoS class.
pub const BANDWIDTH_ALLOCATED: &str = "hyperexport_agent_bandwidth_allocated_bytes_per_second";
/// Bytes counted by the bandwidth limiter, by QoS class and direction (`read`, `upload`): its
/// rate is the achieved bandwidth.
pub const BANDWIDTH_BYTES_TOTAL: &str = "hyperexport_agent_bandwidth_bytes_total";
/// How long data streams waited for bandwidth tokens, per wait.
pub const BANDWIDTH_WAIT_SECONDS: &str = "hyperexport_agent_bandwidth_wait_seconds";

/// How often the read rate is sampled.
pub const RATE_INTERVAL: Duration = Duration::from_secs(1);

static BYTES_READ: AtomicU64 = AtomicU64::new(0);

/// Gives every metric its help text and unit (call once the recorder is installed).
pub fn describe() {
    describe_counter!(EXPORTS_TOTAL, "Finished exports by provider and status");
    describe_histogram!(EXPORT_DURATION_SECONDS, Unit::Seconds, "Wall time of successful exports");
    describe_counter!(EXPORT_BYTES_TOTAL, Unit::Bytes, "Bytes read from export sources");
    describe_gauge!(DOWNLOAD_SPEED, "Bytes read from export sources per second, over the last second");
    describe_gauge!(ACTIVE_EXPORTS, "Exports running on this agent");
    describe_counter!(REPLICATION_BYTES_TOTAL, Unit::Bytes, "Chunk bytes moved by replication, as stored, by direction");
    describe_counter!(REPLICATION_POINTS_TOTAL, "Recovery points replicated, by direction");
    describe_counter!(REPLICATION_REFUSED_TOTAL, "Replication peers or streams refused, by reason");
    describe_gauge!(BANDWIDTH_RATE, "The agent's bandwidth rate for all its data streams (+Inf: no limit)");
    describe_gauge!(BANDWIDTH_ALLOCATED, "Bandwidth allocated to this agent's jobs, by QoS class");
    describe_counter!(BANDWIDTH_BYTES_TOTAL, Unit::Bytes, "Bytes counted by the bandwidth limiter, by QoS class and direction");
    describe_histogram!(BANDWIDTH_WAIT_SECONDS, Unit::Seconds, "How long data streams waited for bandwidth tokens, per wait");
    gauge!(ACTIVE_EXPORTS).set(0.0);
    gauge!(DOWNLOAD_SPEED).set(0.0);
    gauge!(BANDWIDTH_RATE).set(f64::INFINITY);
    counter!(EXPORT_BYTES_TOTAL).absolute(0);
}

/// Counts bytes read from a source.
pub fn bytes_read(bytes: u64) {
    BYTES_READ.fetch_add(bytes, Ordering::Relaxed);
    counter!(EXPORT_BYTES_TOTAL).increment(bytes);
}

/// Replication moved `bytes` of chunks in `direction` (`sent`, `received` or `fetched`).
pub fn replication_bytes(direction: &'static str, bytes: u64) {
    counter!(REPLICATION_BYTES_TOTAL, "direction" => direction).increment(bytes);
}

/// A point was replicated in `direction`.
pub fn replication_point(direction: &'static str) {
    counter!(REPLICATION_POINTS_TOTAL, "direction" => direction).increment(1);
}

/// A replication peer or stream was refused for `reason` (`handshake` or `protocol`).
pub fn replication_refused(reason: &'static str) {
    counter!(REPLICATION_REFUSED_TOTAL, "reason" => reason).increment(1);
}

/// An export started (`+1`) or stopped (`-1`).
pub fn active(delta: f64) {
    gauge!(ACTIVE_EXPORTS).increment(delta);
}

/// An export finished with `status` after `elapsed`.
pub fn finished(provider: &'static str, status: &'static str, elapsed: Duration) {
    counter!(EXPORTS_TOTAL, "provider" => provider, "status" => status).increment(1);
    if status == "succeeded" {
        histogram!(EXPORT_DURATION_SECONDS).record(elapsed.as_secs_f64());
    }
}

/// Samples the read rate every [`RATE_INTERVAL`] until the runtime stops.
pub fn spawn_rate_sampler() {
    tokio::spawn(async {
        let mut last = (Instant::now(), BYTES_READ.load(Ordering::Relaxed));
        let mut tick = tokio::time::interval(RATE_INTERVAL);
        loop {
            tick.tick().await;
            let now = (Instant::now(), BYTES_READ.load(Ordering::Relaxed));
            let seconds = now.0.duration_since(last.0).as_secs_f64();
            if seconds > 0.0 {
                gauge!(DOWNLOAD_SPEED).set((now.1 - last.1) as f64 / seconds);
            }
            last = now;
        }
    });
}

/// The limiter's rates changed: the agent's `rate` and its jobs' `(class, rate)`.
pub fn bandwidth_rates<'a>(rate: f64, jobs: impl Iterator<Item = (&'a str, f64)>) {
    gauge!(BANDWIDTH_RATE).set(rate);
    let mut by_class: std::collections::BTreeMap<&str, f64> = std::collections::BTreeMap::new();
    for (class, rate) in jobs {
        *by_class.entry(class).or_default() += rate;
    }
    for (class, rate) in by_class {
        gauge!(BANDWIDTH_ALLOCATED, "class" => class.to_string()).set(rate);
    }
}

/// The limiter counted `bytes` of a job of `class` (empty: not yet told) going `direction`.
pub fn bandwidth_bytes(class: &str, direction: crate::bandwidth::Direction, bytes: u64) {
    let direction = match direction {
        crate::bandwidth::Direction::Read => "read",
        crate::bandwidth::Direction::Upload => "upload",
    };
    let class = if class.is_empty() { "unassigned".to_string() } else { class.to_string() };
    counter!(BANDWIDTH_BYTES_TOTAL, "class" => class, "direction" => direction).increment(bytes);
}

/// A data stream waited `waited` for tokens.
pub fn bandwidth_waited(waited: Duration) {
    histogram!(BANDWIDTH_WAIT_SECONDS).record(waited.as_secs_f64());
}
