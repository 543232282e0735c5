//! What the tasks of each job in memory occupy and wait for, kept per job and summed per agent,
//! so that placement does not recount every task of every job each turn: a job is counted again
//! only in a turn that changed it (every change of a task marks its job changed, which is also
//! what gets it written to the store).

use foldhash::{HashMap, HashSet};

use hyperexport_proto::v1::{Job, JobState};

use crate::task_state::holds_agent;

/// The counts of every job in memory, and their sums per agent.
#[derive(Default)]
pub(super) struct Loads {
    jobs: HashMap<String, JobLoad>,
    agents: HashMap<String, u32>,
}

/// One job's counts.
#[derive(Debug, Default, PartialEq)]
struct JobLoad {
    /// Tasks occupying each agent, by agent id in ascending order.
    held: Vec<(String, u32)>,
    /// Tasks occupying an agent, in all.
    running: u32,
    /// The earliest time (Unix ms) one of its queued tasks may start; `None` when none is queued.
    next_due: Option<i64>,
}

fn load_of(job: &Job) -> JobLoad {
    let mut holders = Vec::new();
    let mut next_due: Option<i64> = None;
    for t in &job.tasks {
        if holds_agent(t) {
            holders.push(t.agent.as_str());
        } else if t.state() == JobState::Pending {
            next_due = Some(next_due.map_or(t.not_before_unix_ms, |d| d.min(t.not_before_unix_ms)));
        }
    }
    holders.sort_unstable();
    let mut held: Vec<(String, u32)> = Vec::new();
    for agent in &holders {
        match held.last_mut() {
            Some((last, n)) if last == agent => *n += 1,
            _ => held.push((agent.to_string(), 1)),
        }
    }
    JobLoad { held, running: holders.len() as u32, next_due }
}

impl Loads {
    /// Brings the counts up to date with `jobs`: counts again the jobs in `changed` and those not
    /// counted yet, and drops those no longer in memory.
    pub fn sync(&mut self, jobs: &HashMap<String, Job>, changed: &HashSet<String>) {
        let gone: Vec<String> = self.jobs.keys().filter(|id| !jobs.contains_key(*id)).cloned().collect();
        for id in gone {
            if let Some(old) = self.jobs.remove(&id) {
                self.add(&old, false);
            }
        }
        for job in jobs.values() {
            if changed.contains(&job.id) || !self.jobs.contains_key(&job.id) {
                self.refresh(job);
            }
        }
    }

    /// Counts `job` again.
    pub fn refresh(&mut self, job: &Job) {
        let load = load_of(job);
        if let Some(old) = self.jobs.remove(&job.id) {
            self.add(&old, false);
        }
        self.add(&load, true);
        self.jobs.insert(job.id.clone(), load);
    }

    fn add(&mut self, load: &JobLoad, add: bool) {
        for (agent, n) in &load.held {
            let total = self.agents.entry(agent.clone()).or_default();
            *total = if add { *total + n } else { total.saturating_sub(*n) };
            if *total == 0 {
                self.agents.remove(agent);
            }
        }
    }

    /// Tasks occupying `agent`.
    pub fn running(&self, agent: &str) -> u32 {
        self.agents.get(agent).copied().unwrap_or(0)
    }

    /// Tasks of job `id` occupying an agent.
    pub fn job_running(&self, id: &str) -> u32 {
        self.jobs.get(id).map_or(0, |l| l.running)
    }

    /// Whether job `id` has a queued task that may start at `now` (Unix ms).
    pub fn waiting(&self, id: &str, now: i64) -> bool {
        self.jobs.get(id).and_then(|l| l.next_due).is_some_and(|due| due <= now)
    }

    /// Panics unless the counts equal those of `jobs` counted afresh (debug builds check this
    /// every turn, so a change of a task that does not mark its job changed fails the tests).
    pub fn check(&self, jobs: &HashMap<String, Job>) {
        let mut fresh = Loads::default();
        fresh.sync(jobs, &HashSet::default());
        let sorted = |m: &HashMap<String, u32>| {
            let mut v: Vec<(String, u32)> = m.iter().map(|(k, n)| (k.clone(), *n)).collect();
            v.sort();
            v
        };
        assert_eq!(sorted(&self.agents), sorted(&fresh.agents), "running tasks per agent drifted from the jobs");
        for (id, load) in &fresh.jobs {
            assert_eq!(self.jobs.get(id), Some(load), "the counts of job {id} drifted from its tasks");
        }
        assert_eq!(self.jobs.len(), fresh.jobs.len(), "jobs counted that are no longer in memory");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyperexport_proto::v1::Task;

    fn task(state: JobState, agent: &str, not_before: i64) -> Task {
        let mut t = Task { agent: agent.into(), not_before_unix_ms: not_before, ..Default::default() };
        t.set_state(state);
        t
    }

    fn job(id: &str, tasks: Vec<Task>) -> Job {
        Job { id: id.into(), tasks, ..Default::default() }
    }

    #[test]
    fn counts_follow_the_jobs_they_are_told_changed() {
        let mut jobs = HashMap::default();
        jobs.insert(
            "j1".to_string(),
            job("j1", vec![task(JobState::Running, "b", 0), task(JobState::Scheduled, "a", 0), task(JobState::Pending, "", 50)]),
        );
        jobs.insert("j2".to_string(), job("j2", vec![task(JobState::Running, "a", 0), task(JobState::Succeeded, "c", 0)]));
        let mut loads = Loads::default();
        loads.sync(&jobs, &HashSet::default());
        assert_eq!((loads.running("a"), loads.running("b"), loads.running("c")), (2, 1, 0));
        assert_eq!((loads.job_running("j1"), loads.job_running("j2")), (2, 1));
        assert!(!loads.waiting("j1", 49), "its queued task may start at 50");
        assert!(loads.waiting("j1", 50));
        assert!(!loads.waiting("j2", 100), "nothing queued");
        loads.check(&jobs);

        // j2's task on a ends and j1's pending one starts on c; only j1 is marked changed.
        jobs.get_mut("j2").unwrap().tasks[0].set_state(JobState::Succeeded);
        let t = &mut jobs.get_mut("j1").unwrap().tasks[2];
        t.set_state(JobState::Scheduled);
        t.agent = "c".into();
        loads.sync(&jobs, &["j1".to_string()].into_iter().collect());
        assert!(std::panic::catch_unwind(|| loads.check(&jobs)).is_err(), "a change not marked is caught");
        loads.sync(&jobs, &["j2".to_string()].into_iter().collect());
        loads.check(&jobs);
        assert_eq!((loads.running("a"), loads.running("c")), (1, 1));

        // A job leaving memory takes its counts with it.
        jobs.remove("j1");
        loads.sync(&jobs, &HashSet::default());
        assert_eq!((loads.running("a"), loads.running("b"), loads.running("c")), (0, 0, 0));
        loads.check(&jobs);
    }
}
