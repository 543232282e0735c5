//! Placement: which queued task runs next, and on which agent.
//!
//! The queue is ordered by priority (highest first), then age (oldest first). A task may run on
//! a live agent that serves its VM, is in the job's region (if it names one), carries the job's
//! labels and has a free slot; among those the least loaded wins (running tasks over capacity,
//! then fewer running, then the agent id, so that placement is deterministic).

use std::collections::HashMap;

use hyperexport_proto::v1::{Job, Register};

/// What placement needs to know of a live agent.
pub struct Candidate<'a> {
    /// Its registration (region, labels, capacity, VMs).
    pub register: &'a Register,
    /// Tasks it runs now.
    pub running: u32,
}

impl Candidate<'_> {
    fn free(&self) -> bool {
        self.running < self.register.capacity.max(1)
    }

    fn load(&self) -> (u64, u32) {
        // Running over capacity as a fraction, scaled to compare as integers.
        ((self.running as u64 * 1_000_000) / self.register.capacity.max(1) as u64, self.running)
    }
}

/// Whether `agent` may run tasks of `job` (location and labels; not its load).
pub fn eligible(job: &Job, agent: &Register) -> bool {
    (job.region.is_empty() || job.region == agent.region) && job.labels.iter().all(|(k, v)| agent.labels.get(k) == Some(v))
}

/// The agent to run a task of `job` exporting `vm`, among `agents` (keyed by id), if any fits.
pub fn choose<'a>(job: &Job, vm: &str, agents: &'a HashMap<String, Candidate<'a>>, serving: &[String]) -> Option<&'a str> {
    serving
        .iter()
        .filter_map(|id| agents.get_key_value(id))
        .filter(|(_, a)| a.free() && eligible(job, a.register) && a.register.vms.iter().any(|v| v.name == vm))
        .min_by(|(ia, a), (ib, b)| a.load().cmp(&b.load()).then_with(|| ia.cmp(ib)))
        .map(|(id, _)| id.as_str())
}

/// Queue order: higher priority first, then older jobs, then job id and task position.
pub fn queue_key(job: &Job, task_index: usize) -> (i32, i64, String, usize) {
    (-job.priority, job.created_unix_ms, job.id.clone(), task_index)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyperexport_proto::v1::Vm;

    fn agent(id: &str, region: &str, capacity: u32, vms: &[&str]) -> Register {
        Register {
            agent_id: id.into(),
            region: region.into(),
            capacity,
            vms: vms.iter().map(|n| Vm { name: n.to_string(), ..Default::default() }).collect(),
            labels: [("tier".to_string(), "gold".to_string())].into(),
            ..Default::default()
        }
    }

    #[test]
    fn least_loaded_eligible_agent_with_a_free_slot_wins() {
        let (a, b, c) = (agent("a", "eu", 2, &["web"]), agent("b", "eu", 4, &["web"]), agent("c", "us", 4, &["web"]));
        let mut agents = HashMap::new();
        agents.insert("a".to_string(), Candidate { register: &a, running: 1 });
        agents.insert("b".to_string(), Candidate { register: &b, running: 1 });
        agents.insert("c".to_string(), Candidate { register: &c, running: 0 });
        let serving: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        let eu = Job { region: "eu".into(), ..Default::default() };
        assert_eq!(choose(&eu, "web", &agents, &serving), Some("b"), "b is a quarter full, a half");
        assert_eq!(choose(&Job::default(), "web", &agents, &serving), Some("c"));
        assert_eq!(choose(&eu, "db", &agents, &serving), None, "nobody serves db");
        let silver = Job { labels: [("tier".to_string(), "silver".to_string())].into(), ..Default::default() };
        assert_eq!(choose(&silver, "web", &agents, &serving), None);
        agents.get_mut("b").unwrap().running = 4;
        assert_eq!(choose(&eu, "web", &agents, &serving), Some("a"), "b is full");
    }

    #[test]
    fn queue_orders_by_priority_then_age() {
        let old = Job { id: "x".into(), priority: 1, created_unix_ms: 1, ..Default::default() };
        let new_high = Job { id: "y".into(), priority: 9, created_unix_ms: 5, ..Default::default() };
        let new_low = Job { id: "z".into(), priority: 1, created_unix_ms: 5, ..Default::default() };
        let mut keys = [queue_key(&new_low, 0), queue_key(&old, 1), queue_key(&new_high, 0), queue_key(&old, 0)];
        keys.sort();
        let order: Vec<_> = keys.iter().map(|k| (k.2.as_str(), k.3)).collect();
        assert_eq!(order, [("y", 0), ("x", 0), ("x", 1), ("z", 0)]);
    }
}
