//! The scheduler's part of bandwidth budgets: the demand agents report, the allocation run every
//! interval (and when work starts or ends), and the `Rates` each agent is sent when its rates
//! change.
//!
//! Demand of one job on one agent: backlogged (it waited for tokens since its last report) is
//! "as much as it gets"; otherwise what it achieved plus a quarter, at least [`DEMAND_FLOOR`]
//! so that it can show it wants more; not reported yet (just assigned) is "as much as it gets".

use std::path::PathBuf;
use std::time::{Duration, Instant};

use foldhash::{HashMap, HashMapExt, HashSet};
use hyperexport_proto::v1::{BandwidthNode, BandwidthTree, Job, JobDemand, JobRate, Rates};

use super::allocate::{Leaf, Level, Rate, allocate};
use super::config::{Compiled, DEFAULT_CLASS};

/// The least demand a job that did not wait for tokens is credited with (bytes per second).
pub const DEMAND_FLOOR: Rate = 256.0 * 1024.0;
/// Shortest time between two allocations asked for by work starting or ending: under a burst of
/// them (a thousand agents finishing tasks within a second) one allocation covers many, instead
/// of one per scheduler turn (which cost a third of the coordinator's CPU in
/// `scripts/scale-bench.sh`). Agent-level rates stay in force meanwhile, so no cap is exceeded.
pub const MIN_SPACING: Duration = Duration::from_millis(50);
/// Headroom over the achieved rate in the demand of work that did not wait for tokens.
const HEADROOM: f64 = 1.25;
/// Test hook: a file holding the time (Unix milliseconds) the timetables are evaluated at.
const CLOCK_ENV: &str = "HYPEREXPORT_TEST_CLOCK_FILE";

/// An agent as the allocation sees it.
pub struct AgentPlace<'a> {
    pub id: &'a str,
    pub region: &'a str,
    pub site: &'a str,
}

/// The bandwidth state the scheduler keeps.
pub struct Plan {
    config: Compiled,
    /// Per agent, the last report per job.
    reports: HashMap<String, HashMap<String, JobDemand>>,
    /// The rates each agent was last sent.
    sent: HashMap<String, Rates>,
    last_run: Option<Instant>,
    dirty: bool,
    tree: BandwidthTree,
    clock: Option<PathBuf>,
}

fn wire_rate(rate: Rate) -> u64 {
    if rate.is_finite() { rate.round().max(1.0) as u64 } else { 0 }
}

impl Plan {
    /// A plan under `config`.
    pub fn new(config: Compiled) -> Plan {
        let clock = std::env::var_os(CLOCK_ENV).map(PathBuf::from);
        Plan { config, reports: HashMap::new(), sent: HashMap::new(), last_run: None, dirty: true, tree: BandwidthTree::default(), clock }
    }

    /// The configuration in force.
    pub fn config(&self) -> &Compiled {
        &self.config
    }

    /// Puts a new configuration in force at the next turn.
    pub fn set_config(&mut self, config: Compiled) {
        self.config = config;
        self.dirty = true;
    }

    /// Work started or ended: allocate again at the end of this turn.
    pub fn touch(&mut self) {
        self.dirty = true;
    }

    /// An agent reported its jobs' demand. A job that started or stopped waiting for tokens
    /// changes the allocation at once; other changes wait for the interval.
    pub fn report(&mut self, agent: &str, demand: Vec<JobDemand>) {
        let jobs: HashMap<String, JobDemand> = demand.into_iter().map(|d| (d.job_id.clone(), d)).collect();
        let before = self.reports.get(agent);
        let flipped = jobs.values().any(|d| before.and_then(|b| b.get(&d.job_id)).is_none_or(|b| b.backlogged != d.backlogged));
        self.dirty |= flipped;
        self.reports.insert(agent.to_string(), jobs);
    }

    /// An agent is gone (it is sent its rates again when it attaches).
    pub fn forget(&mut self, agent: &str) {
        self.reports.remove(agent);
        self.sent.remove(agent);
        self.dirty = true;
    }

    /// Whether the allocation should run now.
    pub fn due(&self) -> bool {
        self.next_due().is_none_or(|at| at <= Instant::now())
    }

    /// Whether the allocation has been due for `by` or more.
    pub fn overdue(&self, by: Duration) -> bool {
        self.next_due().is_none_or(|at| at + by <= Instant::now())
    }

    /// When the allocation is next due (`None`: now, it never ran): every interval, and
    /// [`MIN_SPACING`] after the last run once work started or ended.
    pub fn next_due(&self) -> Option<Instant> {
        let last = self.last_run?;
        let wait = if self.dirty { MIN_SPACING.min(self.config.interval) } else { self.config.interval };
        Some(last + wait)
    }

    /// The last allocation's tree.
    pub fn tree(&self) -> BandwidthTree {
        self.tree.clone()
    }

    fn now_ms(&self) -> i64 {
        let injected = self.clock.as_ref().and_then(|p| std::fs::read_to_string(p).ok()).and_then(|t| t.trim().parse().ok());
        injected.unwrap_or_else(crate::jobs::now_ms)
    }

    /// Allocates for `work` (each active task's agent and job) over `agents`; returns the rates
    /// to send, to the agents whose rates changed.
    pub fn run<'a>(&mut self, agents: &[AgentPlace<'a>], work: impl Iterator<Item = (&'a str, &'a Job)>) -> Vec<(String, Rates)> {
        let now = self.now_ms();
        self.dirty = false;
        self.last_run = Some(Instant::now());
        let mut caps = self.config.caps_at(now);
        let place: HashMap<&str, &AgentPlace> = agents.iter().map(|a| (a.id, a)).collect();
        let mut seen = HashSet::default();
        let mut leaves = Vec::new();
        let mut jobs: Vec<&Job> = Vec::new();
        for (agent, job) in work {
            let Some(at) = place.get(agent) else { continue };
            if !seen.insert((agent, job.id.as_str())) {
                continue;
            }
            let report = self.reports.get(agent).and_then(|r| r.get(&job.id));
            let demand = match report {
                Some(r) if !r.backlogged => (r.achieved_bps * HEADROOM).max(DEMAND_FLOOR),
                _ => f64::INFINITY,
            };
            // Once per job, though it has a leaf per agent running its tasks.
            if job.bandwidth_cap > 0 && !caps.jobs.contains_key(&job.id) {
                caps.jobs.insert(job.id.clone(), job.bandwidth_cap as Rate);
            }
            let class = if job.class.is_empty() { DEFAULT_CLASS } else { job.class.as_str() };
            leaves.push(Leaf {
                region: at.region.to_string(),
                site: at.site.to_string(),
                class: class.to_string(),
                job: job.id.clone(),
                agent: agent.to_string(),
                demand,
                achieved: report.map_or(0.0, |r| r.achieved_bps),
            });
            jobs.push(job);
        }
        let allocation = allocate(&caps, &leaves);
        let mut rates: HashMap<&str, Rates> = agents
            .iter()
            .map(|a| {
                // Idle: the tightest cap above it, so that it is never unlimited under a cap.
                let idle = Rates { agent_bps: wire_rate(self.config.path_cap(&caps, a.region, a.site)), ..Default::default() };
                (a.id, idle)
            })
            .collect();
        let mut sums: HashMap<&str, Rate> = HashMap::new();
        for ((leaf, rate), job) in leaves.iter().zip(&allocation.leaves).zip(&jobs) {
            *sums.entry(leaf.agent.as_str()).or_default() += rate;
            let r = rates.get_mut(leaf.agent.as_str()).expect("leaves are of known agents");
            r.jobs.push(JobRate { job_id: job.id.clone(), bps: wire_rate(*rate), burst: job.bandwidth_burst, class: leaf.class.clone() });
        }
        let mut by_class: HashMap<&str, (Rate, Rate)> = self.config.config.classes.keys().map(|c| (c.as_str(), (0.0, 0.0))).collect();
        for (leaf, rate) in leaves.iter().zip(&allocation.leaves) {
            let entry = by_class.entry(leaf.class.as_str()).or_default();
            entry.0 += rate;
            entry.1 += leaf.achieved;
        }
        for (class, (allocated, achieved)) in by_class {
            crate::metrics::bandwidth(class, allocated, achieved);
        }
        let mut out = Vec::new();
        for (agent, mut r) in rates {
            if let Some(sum) = sums.get(agent) {
                r.agent_bps = wire_rate(*sum);
            }
            r.counts = self.config.config.counts.clone();
            r.adaptive = self.config.config.adaptive;
            r.jobs.sort_by(|a, b| a.job_id.cmp(&b.job_id));
            if self.sent.get(agent) != Some(&r) {
                self.sent.insert(agent.to_string(), r.clone());
                out.push((agent.to_string(), r));
            }
        }
        self.tree = BandwidthTree { nodes: allocation.nodes.iter().map(node).collect(), unix_ms: now };
        out
    }
}

fn node(n: &super::allocate::Node) -> BandwidthNode {
    let level = match n.level {
        Level::Global => "global",
        Level::Region => "region",
        Level::Site => "site",
        Level::Class => "class",
        Level::Job => "job",
        Level::Agent => "agent",
    };
    BandwidthNode {
        level: level.into(),
        name: n.name.clone(),
        depth: n.depth as u32,
        cap_bps: n.cap,
        weight: n.weight,
        demand_bps: n.demand,
        allocated_bps: n.allocated,
        achieved_bps: n.achieved,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bandwidth::config::compile;
    use hyperexport_proto::v1::BandwidthConfig;

    fn job(id: &str, class: &str, cap: u64) -> Job {
        Job { id: id.into(), class: class.into(), bandwidth_cap: cap, ..Default::default() }
    }

    #[test]
    fn rates_follow_demand_and_are_sent_only_when_they_change() {
        let config = BandwidthConfig { global: "60M".into(), regions: [("b".into(), "20M".into())].into(), ..Default::default() };
        let mut plan = Plan::new(compile(config).unwrap());
        let agents = [
            AgentPlace { id: "a1", region: "a", site: "" },
            AgentPlace { id: "b1", region: "b", site: "" },
            AgentPlace { id: "b2", region: "b", site: "" },
            AgentPlace { id: "idle", region: "b", site: "" },
        ];
        let (j1, j2, j3) = (job("j1", "", 0), job("j2", "bulk", 0), job("j3", "critical", 5 << 20));
        let work = || [("a1", &j1), ("b1", &j2), ("b2", &j3)].into_iter();
        let sent: HashMap<String, Rates> = plan.run(&agents, work()).into_iter().collect();
        assert_eq!(sent["a1"].agent_bps, 40 << 20);
        assert_eq!(sent["b2"].jobs[0].bps, 5 << 20, "the job cap holds");
        assert_eq!(sent["b1"].agent_bps, 15 << 20, "b2's job cap leaves the rest of b to b1");
        assert_eq!(sent["idle"].agent_bps, 20 << 20, "an idle agent gets the tightest cap above it");
        assert_eq!(sent["b2"].jobs[0].class, "critical");
        assert!(plan.run(&agents, work()).is_empty(), "nothing changed, nothing sent");
        // b1's job stops wanting much: what region b leaves goes to region a.
        plan.report("b1", vec![JobDemand { job_id: "j2".into(), achieved_bps: 1e6, backlogged: false }]);
        let sent: HashMap<String, Rates> = plan.run(&agents, work()).into_iter().collect();
        assert_eq!(sent["b1"].agent_bps, 1_250_000);
        assert!(!sent.contains_key("b2"));
        assert_eq!(sent["a1"].agent_bps, (60 << 20) - 1_250_000 - (5 << 20));
        let tree = plan.tree();
        assert_eq!(tree.nodes[0].level, "global");
        assert_eq!(tree.nodes[0].cap_bps, (60 << 20) as f64);
    }

    #[test]
    fn an_allocation_is_overdue_only_past_its_time_and_the_grace_given() {
        let mut plan = Plan::new(Compiled::default_config());
        assert!(plan.overdue(Duration::from_secs(3600)), "one that never ran is overdue");
        plan.run(&[], std::iter::empty());
        assert!(!plan.due() && !plan.overdue(Duration::ZERO));
        plan.last_run = Some(Instant::now() - MIN_SPACING - Duration::from_millis(100));
        plan.touch();
        assert!(plan.due() && plan.overdue(Duration::from_millis(50)));
        assert!(!plan.overdue(Duration::from_secs(10)));
    }

    #[test]
    fn no_caps_means_unlimited() {
        let mut plan = Plan::new(Compiled::default_config());
        let agents = [AgentPlace { id: "a", region: "r", site: "s" }];
        let j = job("j", "", 0);
        let sent = plan.run(&agents, [("a", &j)].into_iter());
        assert_eq!(sent[0].1.agent_bps, 0);
        assert_eq!(sent[0].1.jobs[0].bps, 0);
    }
}
