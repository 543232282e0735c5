//! Weighted max-min fair allocation of bandwidth down the tree global → region → site → class →
//! job → agent (the approach of Google's BwE), as a pure function of the caps and the demands.
//!
//! Each node's demand is the smaller of its cap and the sum of its children's demands. From the
//! root down, a node's allocation is shared among its children by water-filling: children whose
//! demand is below their weighted fair share get their demand, and what they leave is shared
//! again among the others in proportion to their weights. So no cap is exceeded, nothing a child
//! could use is left unallocated while a cap allows it (work-conserving), and children that all
//! want more than they get receive shares in proportion to their weights. Only classes carry
//! weights; regions, sites, jobs and agents weigh the same.
//!
//! A job's cap holds across all its agents. A job whose agents are in several sites has its cap
//! split among them by demand before the tree is walked (its branches are in different
//! subtrees), so when one of its sites is congested part of that job's cap may go unused.

use foldhash::{HashMap, HashMapExt};

/// Rates are bytes per second; `f64::INFINITY` is "no limit" (for caps) or "as much as it can
/// get" (for the demand of backlogged work).
pub type Rate = f64;

/// The levels of the tree, root first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// All agents together.
    Global,
    /// A region.
    Region,
    /// A site within a region.
    Site,
    /// A QoS class within a site.
    Class,
    /// A job within a class.
    Job,
    /// One agent's part of a job: the leaf.
    Agent,
}

/// The work of one job on one agent, with what it could use now.
#[derive(Debug, Clone)]
pub struct Leaf {
    pub region: String,
    pub site: String,
    pub class: String,
    pub job: String,
    pub agent: String,
    /// What it could use (`INFINITY`: backlogged, as much as it gets).
    pub demand: Rate,
    /// What it achieved over the last report (shown, not used to allocate).
    pub achieved: Rate,
}

/// The caps in force now (timetables already evaluated) and the class weights.
#[derive(Debug, Clone, Default)]
pub struct Caps {
    /// Over all agents (`INFINITY`: none).
    pub global: Rate,
    /// Per region name.
    pub regions: HashMap<String, Rate>,
    /// Per `region/site`.
    pub sites: HashMap<String, Rate>,
    /// Per class name (a class not named weighs 1).
    pub weights: HashMap<String, f64>,
    /// Per job id.
    pub jobs: HashMap<String, Rate>,
}

/// One node of the allocated tree, for `bandwidth show`.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub level: Level,
    /// Its name at its level (region name, site name, class, job id, agent id; `global`).
    pub name: String,
    /// Its depth (0 for the root); nodes are listed depth first.
    pub depth: usize,
    pub cap: Rate,
    pub weight: f64,
    pub demand: Rate,
    pub allocated: Rate,
    pub achieved: Rate,
}

/// The result: a rate per leaf (in the order given) and the tree.
#[derive(Debug, Clone)]
pub struct Allocation {
    pub leaves: Vec<Rate>,
    pub nodes: Vec<Node>,
}

/// Shares `capacity` among children of `(weight, demand)` by weighted water-filling.
pub fn water_fill(capacity: Rate, children: &[(f64, Rate)]) -> Vec<Rate> {
    let total: Rate = children.iter().map(|c| c.1).sum();
    if total <= capacity {
        return children.iter().map(|c| c.1).collect();
    }
    let mut order: Vec<usize> = (0..children.len()).collect();
    order.sort_by(|&a, &b| (children[a].1 / children[a].0).total_cmp(&(children[b].1 / children[b].0)));
    let mut out = vec![0.0; children.len()];
    let (mut left, mut weight): (Rate, f64) = (capacity, children.iter().map(|c| c.0).sum());
    for (at, &i) in order.iter().enumerate() {
        let (w, d) = children[i];
        let share = left * w / weight;
        if d <= share {
            out[i] = d;
            left -= d;
            weight -= w;
        } else {
            for &j in &order[at..] {
                out[j] = left * children[j].0 / weight;
            }
            break;
        }
    }
    out
}

struct Builder<'a> {
    leaves: &'a [Leaf],
    caps: &'a Caps,
    /// Leaf demands after the split of job caps.
    demand: Vec<Rate>,
    nodes: Vec<Node>,
    /// Per node: its children (node indexes), or the leaf it is.
    children: Vec<Result<Vec<usize>, usize>>,
}

impl Builder<'_> {
    fn key(&self, level: Level, leaf: usize) -> &str {
        let l = &self.leaves[leaf];
        match level {
            Level::Global => "global",
            Level::Region => &l.region,
            Level::Site => &l.site,
            Level::Class => &l.class,
            Level::Job => &l.job,
            Level::Agent => &l.agent,
        }
    }

    fn cap_and_weight(&self, level: Level, leaf: usize) -> (Rate, f64) {
        let l = &self.leaves[leaf];
        let cap = |map: &HashMap<String, Rate>, key: &str| map.get(key).copied().unwrap_or(f64::INFINITY);
        match level {
            Level::Global => (self.caps.global, 1.0),
            Level::Region => (cap(&self.caps.regions, &l.region), 1.0),
            Level::Site => (cap(&self.caps.sites, &format!("{}/{}", l.region, l.site)), 1.0),
            Level::Class => (f64::INFINITY, self.caps.weights.get(&l.class).copied().unwrap_or(1.0).max(f64::MIN_POSITIVE)),
            Level::Job => (cap(&self.caps.jobs, &l.job), 1.0),
            Level::Agent => (f64::INFINITY, 1.0),
        }
    }

    /// Builds the node of `level` over the sorted leaves `range` (which share every key above
    /// it); returns its index.
    fn build(&mut self, level: Level, range: &[usize]) -> usize {
        let (cap, weight) = self.cap_and_weight(level, range[0]);
        let id = self.nodes.len();
        let name = self.key(level, range[0]).to_string();
        let depth = level as usize;
        self.nodes.push(Node { level, name, depth, cap, weight, demand: 0.0, allocated: 0.0, achieved: 0.0 });
        self.children.push(Ok(Vec::new()));
        let (demand, achieved, children) = if level == Level::Agent {
            let sum = |f: fn(&Leaf) -> Rate| range.iter().map(|&i| f(&self.leaves[i])).sum::<Rate>();
            let demand: Rate = range.iter().map(|&i| self.demand[i]).sum();
            (demand, sum(|l| l.achieved), Err(range[0]))
        } else {
            let next = next_level(level);
            let mut kids = Vec::new();
            let mut start = 0;
            while start < range.len() {
                let key = self.key(next, range[start]);
                let end = start + range[start..].iter().take_while(|&&i| self.key(next, i) == key).count();
                kids.push(self.build(next, &range[start..end]));
                start = end;
            }
            let demand = kids.iter().map(|&k| self.nodes[k].demand).sum();
            let achieved = kids.iter().map(|&k| self.nodes[k].achieved).sum();
            (demand, achieved, Ok(kids))
        };
        self.nodes[id].demand = demand.min(cap);
        self.nodes[id].achieved = achieved;
        self.children[id] = children;
        id
    }

    /// Gives node `id` `capacity` and shares it down.
    fn assign(&mut self, id: usize, capacity: Rate, out: &mut [Rate]) {
        let allocated = capacity.min(self.nodes[id].cap).min(self.nodes[id].demand);
        self.nodes[id].allocated = allocated;
        match std::mem::replace(&mut self.children[id], Ok(Vec::new())) {
            Err(leaf) => out[leaf] = allocated,
            Ok(kids) => {
                let wants: Vec<(f64, Rate)> = kids.iter().map(|&k| (self.nodes[k].weight, self.nodes[k].demand)).collect();
                for (&k, share) in kids.iter().zip(water_fill(allocated, &wants)) {
                    self.assign(k, share, out);
                }
            }
        }
    }
}

fn next_level(level: Level) -> Level {
    match level {
        Level::Global => Level::Region,
        Level::Region => Level::Site,
        Level::Site => Level::Class,
        Level::Class => Level::Job,
        Level::Job | Level::Agent => Level::Agent,
    }
}

/// Allocates rates to `leaves` under `caps`. Leaves must be distinct (job, agent) pairs.
pub fn allocate(caps: &Caps, leaves: &[Leaf]) -> Allocation {
    let mut demand: Vec<Rate> = leaves.iter().map(|l| l.demand.max(0.0)).collect();
    // Jobs with a cap spread over several sites: split the cap by demand first (see above).
    let mut spread: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, l) in leaves.iter().enumerate() {
        if caps.jobs.contains_key(&l.job) {
            spread.entry(l.job.as_str()).or_default().push(i);
        }
    }
    for (job, members) in spread {
        let first = &leaves[members[0]];
        if members.iter().all(|&i| leaves[i].region == first.region && leaves[i].site == first.site) {
            continue;
        }
        let wants: Vec<(f64, Rate)> = members.iter().map(|&i| (1.0, demand[i])).collect();
        for (&i, share) in members.iter().zip(water_fill(caps.jobs[job], &wants)) {
            demand[i] = share;
        }
    }
    let mut order: Vec<usize> = (0..leaves.len()).collect();
    order.sort_by(|&a, &b| {
        let (x, y) = (&leaves[a], &leaves[b]);
        (&x.region, &x.site, &x.class, &x.job, &x.agent).cmp(&(&y.region, &y.site, &y.class, &y.job, &y.agent))
    });
    let mut out = vec![0.0; leaves.len()];
    if leaves.is_empty() {
        return Allocation { leaves: out, nodes: Vec::new() };
    }
    let mut b = Builder { leaves, caps, demand, nodes: Vec::with_capacity(leaves.len() * 2), children: Vec::new() };
    let root = b.build(Level::Global, &order);
    b.assign(root, f64::INFINITY, &mut out);
    Allocation { leaves: out, nodes: b.nodes }
}

#[cfg(test)]
#[path = "allocate_tests.rs"]
mod tests;
