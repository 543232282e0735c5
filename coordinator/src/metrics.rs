//! The coordinator's metrics, declared once (see DESIGN §8): the queue, the exports agents run,
//! finished exports by outcome, live agents, how long tasks wait in the queue, store commits.

use std::time::Duration;

use metrics::{Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};

/// Tasks waiting for an agent.
pub const QUEUE_LENGTH: &str = "hyperexport_queue_length";
/// Tasks assigned to agents and not finished.
pub const ACTIVE_EXPORTS: &str = "hyperexport_active_exports";
/// Tasks that reached a final state, by provider and status.
pub const EXPORTS_TOTAL: &str = "hyperexport_exports_total";
/// Agents attached now.
pub const AGENTS: &str = "hyperexport_coordinator_agents";
/// From the moment a task could be placed (its job received, requeued or its retry due, and a
/// slot of the chosen agent free) to its assignment handed to that agent's stream.
pub const PLACEMENT_LATENCY_SECONDS: &str = "hyperexport_coordinator_placement_latency_seconds";
/// How long tasks wait in the queue: from submitted, requeued or retry due to assigned.
pub const QUEUE_WAIT_SECONDS: &str = "hyperexport_coordinator_queue_wait_seconds";
/// One scheduler turn's store commit.
pub const COMMIT_SECONDS: &str = "hyperexport_coordinator_store_commit_seconds";

/// Seconds of data a VM would lose if recovered from a target region now, by VM and region.
pub const RPO_SECONDS: &str = "hyperexport_rpo_seconds";
/// The RPO target of the policy covering a VM, by VM and region (for alert rules).
pub const RPO_TARGET_SECONDS: &str = "hyperexport_rpo_target_seconds";
/// Seconds the last test failover of a VM at a region took to a verified restore.
pub const RTO_SECONDS: &str = "hyperexport_rto_seconds";
/// Times a VM's RPO at a region went past its policy's target, by region.
pub const RPO_BREACHES_TOTAL: &str = "hyperexport_rpo_breaches_total";
/// Bandwidth allocated to agents, by QoS class, in the last allocation (+Inf: no cap applies).
pub const BANDWIDTH_ALLOCATED: &str = "hyperexport_coordinator_bandwidth_allocated_bytes_per_second";
/// Bandwidth agents reported achieving, by QoS class.
pub const BANDWIDTH_ACHIEVED: &str = "hyperexport_coordinator_bandwidth_achieved_bytes_per_second";

/// Gives every metric its help text and unit (call once the recorder is installed).
pub fn describe() {
    describe_gauge!(QUEUE_LENGTH, "Tasks waiting for an agent");
    describe_gauge!(ACTIVE_EXPORTS, "Tasks assigned to agents and not finished");
    describe_counter!(EXPORTS_TOTAL, "Tasks that reached a final state, by provider and status");
    describe_gauge!(AGENTS, "Agents attached to this coordinator");
    describe_histogram!(PLACEMENT_LATENCY_SECONDS, Unit::Seconds, "From a task and a free slot being there to the assignment sent");
    describe_histogram!(QUEUE_WAIT_SECONDS, Unit::Seconds, "How long tasks wait in the queue before an agent is assigned");
    describe_histogram!(COMMIT_SECONDS, Unit::Seconds, "Store commit of one scheduler turn");
    describe_gauge!(RPO_SECONDS, Unit::Seconds, "Data a VM would lose if recovered from a target region now");
    describe_gauge!(RPO_TARGET_SECONDS, Unit::Seconds, "The RPO target of the policy covering a VM at a region");
    describe_gauge!(RTO_SECONDS, Unit::Seconds, "Seconds the last test failover of a VM at a region took to a verified restore");
    describe_counter!(RPO_BREACHES_TOTAL, "Times a VM's RPO at a region went past its policy's target");
    describe_gauge!(BANDWIDTH_ALLOCATED, "Bandwidth allocated to agents by QoS class in the last allocation (+Inf: uncapped)");
    describe_gauge!(BANDWIDTH_ACHIEVED, "Bandwidth agents reported achieving, by QoS class");
    for (name, value) in [(QUEUE_LENGTH, 0.0), (ACTIVE_EXPORTS, 0.0), (AGENTS, 0.0)] {
        gauge!(name).set(value);
    }
}

/// The scheduler's view after a turn.
pub fn turn(queued: usize, active: usize, agents: usize) {
    gauge!(QUEUE_LENGTH).set(queued as f64);
    gauge!(ACTIVE_EXPORTS).set(active as f64);
    gauge!(AGENTS).set(agents as f64);
}

/// Providers a label may name; anything else an agent reports counts as `other`, so the label
/// stays bounded.
const PROVIDERS: &[&str] = &["local", "vsphere", "hyperv", "aws", "azure", "gcp", "kvm"];

/// A task reached a final state (`succeeded`, `failed` or `cancelled`).
pub fn finished(provider: &str, status: &'static str) {
    let provider = PROVIDERS.iter().find(|p| **p == provider).copied().unwrap_or("other");
    counter!(EXPORTS_TOTAL, "provider" => provider, "status" => status).increment(1);
}

/// A task was placed `took` after it could have been.
pub fn placed(took: Duration) {
    histogram!(PLACEMENT_LATENCY_SECONDS).record(took.as_secs_f64());
}

/// A task was assigned after waiting `waited` in the queue.
pub fn waited(waited: Duration) {
    histogram!(QUEUE_WAIT_SECONDS).record(waited.as_secs_f64());
}

/// A store commit took `took`.
pub fn committed(took: Duration) {
    histogram!(COMMIT_SECONDS).record(took.as_secs_f64());
}

/// A VM's RPO at `region` now and its target (labels: VMs a policy covers, and its regions).
pub fn rpo(vm: &str, region: &str, seconds: f64, target_seconds: u32) {
    gauge!(RPO_SECONDS, "vm" => vm.to_string(), "target" => region.to_string()).set(seconds);
    gauge!(RPO_TARGET_SECONDS, "vm" => vm.to_string(), "target" => region.to_string()).set(target_seconds as f64);
}

/// A VM's RPO at `region` went past its target.
pub fn rpo_breach(region: &str) {
    counter!(RPO_BREACHES_TOTAL, "target" => region.to_string()).increment(1);
}

/// The last test failover of `vm` at `region` took `seconds`.
pub fn rto(vm: &str, region: &str, seconds: f64) {
    gauge!(RTO_SECONDS, "vm" => vm.to_string(), "target" => region.to_string()).set(seconds);
}

/// The last allocation gave `class` `allocated` bytes per second; its jobs reported `achieved`
/// (labels: the configured classes).
pub fn bandwidth(class: &str, allocated: f64, achieved: f64) {
    gauge!(BANDWIDTH_ALLOCATED, "class" => class.to_string()).set(allocated);
    gauge!(BANDWIDTH_ACHIEVED, "class" => class.to_string()).set(achieved);
}
