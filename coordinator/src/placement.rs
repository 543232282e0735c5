//! Placement: which queued task runs next, and on which agent.
//!
//! The queue is ordered by priority (highest first), then age (oldest first). A task may run on
//! a live agent that serves its VM, is in the job's region (if it names one), carries the job's
//! labels and has a free slot; among those the least loaded wins (running tasks over capacity,
//! then fewer running, then the agent id, so that placement is deterministic).

use foldhash::HashMap;
use std::collections::BTreeSet;

use hyperexport_proto::v1::{Job, Register};

/// What placement needs to know of a live agent.
pub struct Candidate<'a> {
    /// Its registration (region, labels, capacity, VMs).
    pub register: &'a Register,
    /// Tasks it runs now.
    pub running: u32,
}

impl Candidate<'_> {
    /// Whether it has a free slot.
    pub fn free(&self) -> bool {
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

/// The agent to run a task of `job`, among `agents` (keyed by id), choosing from `ids`: agents
/// that serve the task's VM, in ascending order. `None` if none fits now.
///
/// The first idle agent found wins: nobody can be less loaded, and the order makes it the one
/// with the smallest id. Under load this ends the search early instead of looking at every agent
/// that serves the VM.
pub fn choose<'a, 'i>(job: &Job, agents: &HashMap<&'a str, Candidate<'a>>, ids: impl Iterator<Item = &'i str>) -> Option<&'a str> {
    let mut best: Option<(&'a str, (u64, u32))> = None;
    for (id, agent) in ids.filter_map(|id| agents.get_key_value(id)) {
        if !agent.free() || !eligible(job, agent.register) {
            continue;
        }
        let load = agent.load();
        // Ascending ids: on equal load the one found first stays.
        if best.is_none_or(|(_, b)| load < b) {
            best = Some((*id, load));
            if load.1 == 0 {
                break;
            }
        }
    }
    best.map(|(id, _)| id)
}

/// The live agents with a free slot during one placement turn, in ascending id order, overall
/// and by region: a task of a job bound to a region looks only at that region's.
pub struct OpenSlots<'a> {
    all: BTreeSet<&'a str>,
    by_region: HashMap<&'a str, BTreeSet<&'a str>>,
    none: BTreeSet<&'a str>,
}

impl<'a> OpenSlots<'a> {
    /// The agents among `agents` with a free slot.
    pub fn new(agents: &HashMap<&'a str, Candidate<'a>>) -> Self {
        let mut open = OpenSlots { all: BTreeSet::new(), by_region: HashMap::default(), none: BTreeSet::new() };
        for (id, c) in agents.iter().filter(|(_, c)| c.free()) {
            open.all.insert(id);
            open.by_region.entry(c.register.region.as_str()).or_default().insert(id);
        }
        open
    }

    /// The agents with a free slot that tasks of `job` may run on as far as its region goes.
    pub fn for_job(&self, job: &Job) -> &BTreeSet<&'a str> {
        match job.region.as_str() {
            "" => &self.all,
            region => self.in_region(region),
        }
    }

    /// The agents with a free slot in `region`.
    pub fn in_region(&self, region: &str) -> &BTreeSet<&'a str> {
        self.by_region.get(region).unwrap_or(&self.none)
    }

    /// `id`, of region `region`, has no free slot left.
    pub fn fill(&mut self, id: &str, region: &str) {
        self.all.remove(id);
        if let Some(set) = self.by_region.get_mut(region) {
            set.remove(id);
        }
    }
}

/// Queue order of jobs: higher priority first, then older, then by id (a job's tasks go in the
/// order the job names them).
pub fn queue_order(job: &Job) -> (i32, i64, &str) {
    (-job.priority, job.created_unix_ms, job.id.as_str())
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

    /// Candidates keyed by agent id, each with the tasks it runs.
    fn candidates<'a>(agents: &[(&'a Register, u32)]) -> HashMap<&'a str, Candidate<'a>> {
        agents.iter().map(|&(register, running)| (register.agent_id.as_str(), Candidate { register, running })).collect()
    }

    #[test]
    fn least_loaded_eligible_agent_with_a_free_slot_wins() {
        let (a, b, c) = (agent("a", "eu", 2, &["web"]), agent("b", "eu", 4, &["web"]), agent("c", "us", 4, &["web"]));
        let mut agents = candidates(&[(&a, 1), (&b, 1), (&c, 0)]);
        let serving = || ["a", "b", "c"].into_iter();
        let eu = Job { region: "eu".into(), ..Default::default() };
        assert_eq!(choose(&eu, &agents, serving()), Some("b"), "b is a quarter full, a half");
        assert_eq!(choose(&Job::default(), &agents, serving()), Some("c"));
        assert_eq!(choose(&eu, &agents, std::iter::empty()), None, "nobody serves the VM");
        assert_eq!(choose(&eu, &agents, ["gone"].into_iter()), None, "an agent no longer live");
        let silver = Job { labels: [("tier".to_string(), "silver".to_string())].into(), ..Default::default() };
        assert_eq!(choose(&silver, &agents, serving()), None);
        agents.get_mut("b").unwrap().running = 4;
        assert_eq!(choose(&eu, &agents, serving()), Some("a"), "b is full");
        agents.get_mut("a").unwrap().running = 0;
        agents.get_mut("b").unwrap().running = 0;
        assert_eq!(choose(&Job::default(), &agents, serving()), Some("a"), "of idle agents, the smallest id");
    }

    #[test]
    fn open_slots_are_kept_overall_and_by_region() {
        let (a, b, c) = (agent("a", "eu", 1, &["web"]), agent("b", "eu", 1, &["web"]), agent("c", "us", 1, &["web"]));
        let mut open = OpenSlots::new(&candidates(&[(&a, 0), (&b, 1), (&c, 0)]));
        let ids = |set: &BTreeSet<&str>| set.iter().map(|id| id.to_string()).collect::<Vec<_>>();
        let (eu, anywhere, mars) =
            (Job { region: "eu".into(), ..Default::default() }, Job::default(), Job { region: "mars".into(), ..Default::default() });
        assert_eq!(ids(open.for_job(&anywhere)), ["a", "c"], "b is full");
        assert_eq!(ids(open.for_job(&eu)), ["a"]);
        assert!(open.for_job(&mars).is_empty(), "a region without agents");
        assert_eq!((ids(open.in_region("us")), ids(open.in_region("eu"))), (vec!["c".to_string()], vec!["a".to_string()]));
        open.fill("a", "eu");
        assert!(open.for_job(&eu).is_empty());
        assert_eq!(ids(open.for_job(&anywhere)), ["c"]);
    }

    #[test]
    fn queue_orders_by_priority_then_age() {
        let old = Job { id: "x".into(), priority: 1, created_unix_ms: 1, ..Default::default() };
        let new_high = Job { id: "y".into(), priority: 9, created_unix_ms: 5, ..Default::default() };
        let new_low = Job { id: "z".into(), priority: 1, created_unix_ms: 5, ..Default::default() };
        let mut jobs = [&new_low, &old, &new_high];
        jobs.sort_by(|a, b| queue_order(a).cmp(&queue_order(b)));
        assert_eq!(jobs.map(|j| j.id.as_str()), ["y", "x", "z"]);
    }
}
