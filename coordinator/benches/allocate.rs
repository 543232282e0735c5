//! The bandwidth allocation at the scale of the issue: 1,000 agents in 50 sites (5 regions),
//! each carrying a job of each of 3 classes (3,000 leaves), with global, region, site and job
//! caps and a mix of backlogged and light demand. `allocate` is the pure function; `plan` is
//! what the scheduler pays per interval (leaves built from the jobs, rates per agent compared
//! with the last ones sent).
//!
//! `cargo bench -p hyperexport-coordinator --bench allocate`

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use hyperexport_coordinator::bandwidth::allocate::{Caps, Leaf, allocate};
use hyperexport_coordinator::bandwidth::config::compile;
use hyperexport_coordinator::bandwidth::plan::{AgentPlace, Plan};
use hyperexport_proto::v1::{BandwidthConfig, Job};

const AGENTS: usize = 1000;
const SITES: usize = 50;
const REGIONS: usize = 5;
const CLASSES: [&str; 3] = ["critical", "standard", "bulk"];

fn site_of(agent: usize) -> (String, String) {
    let site = agent % SITES;
    (format!("r{}", site % REGIONS), format!("s{site}"))
}

fn leaves() -> Vec<Leaf> {
    let mut out = Vec::with_capacity(AGENTS * CLASSES.len());
    for agent in 0..AGENTS {
        let (region, site) = site_of(agent);
        for (c, class) in CLASSES.iter().enumerate() {
            let demand = if (agent + c) % 3 == 0 { (1 + agent % 7) as f64 * 1e6 } else { f64::INFINITY };
            out.push(Leaf {
                region: region.clone(),
                site: site.clone(),
                class: class.to_string(),
                job: format!("job-{site}-{class}"),
                agent: format!("agent-{agent:04}"),
                demand,
                achieved: 0.0,
            });
        }
    }
    out
}

fn config() -> BandwidthConfig {
    BandwidthConfig {
        global: "10G".into(),
        regions: (0..REGIONS).map(|r| (format!("r{r}"), "3G".into())).collect(),
        sites: (0..SITES).map(|s| (format!("r{}/s{s}", s % REGIONS), "400M".into())).collect(),
        ..Default::default()
    }
}

fn bench(c: &mut Criterion) {
    let leaves = leaves();
    let compiled = compile(config()).expect("valid configuration");
    let mut caps: Caps = compiled.caps_at(0);
    for l in leaves.iter().filter(|l| l.class == "bulk") {
        caps.jobs.insert(l.job.clone(), 50e6);
    }
    c.bench_function("allocate 1000 agents x 3 classes x 50 sites", |b| b.iter(|| black_box(allocate(&caps, black_box(&leaves)))));

    let names: Vec<(String, String, String)> = (0..AGENTS)
        .map(|a| {
            let (region, site) = site_of(a);
            (format!("agent-{a:04}"), region, site)
        })
        .collect();
    let agents: Vec<AgentPlace> = names.iter().map(|(id, region, site)| AgentPlace { id, region, site }).collect();
    let jobs: Vec<Job> = (0..SITES)
        .flat_map(|s| {
            CLASSES.iter().map(move |class| Job {
                id: format!("job-s{s}-{class}"),
                class: class.to_string(),
                bandwidth_cap: if *class == "bulk" { 50 << 20 } else { 0 },
                ..Default::default()
            })
        })
        .collect();
    let work: Vec<(&str, &Job)> = (0..AGENTS)
        .flat_map(|a| (0..CLASSES.len()).map(move |c| (a, c)))
        .map(|(a, c)| (agents[a].id, &jobs[(a % SITES) * CLASSES.len() + c]))
        .collect();
    let mut plan = Plan::new(compile(config()).expect("valid configuration"));
    c.bench_function("scheduler plan: 1000 agents x 3 classes x 50 sites", |b| {
        b.iter(|| {
            plan.touch();
            black_box(plan.run(&agents, work.iter().copied()))
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
