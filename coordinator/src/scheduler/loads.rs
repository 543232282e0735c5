//! What the tasks of each job in memory occupy and wait for, kept per job and summed per agent,
//! so that placement does not recount every task of every job each turn: a job is looked at
//! again only in a turn that changed it (every change of a task marks its job changed, which is
//! also what gets it written to the store), and then only its tasks that changed move a count.

use foldhash::{HashMap, HashSet};

use hyperexport_proto::v1::{Job, JobState, Task};

use crate::task_state::{holds_agent, is_active};

/// The counts of every job in memory, and their sums per agent and overall.
#[derive(Default)]
pub(super) struct Loads {
    jobs: HashMap<String, JobLoad>,
    /// Tasks occupying each agent.
    agents: HashMap<String, u32>,
    /// The slots of each attached agent.
    capacity: HashMap<String, u32>,
    /// The attached agents with a free slot.
    free: HashSet<String>,
    /// Free slots over all attached agents.
    open_slots: usize,
    /// Tasks queued, in all jobs.
    queued: usize,
    /// Tasks occupying an agent, in all jobs.
    held: usize,
}

/// One task as last counted.
#[derive(Debug, Default, Clone, PartialEq)]
struct TaskLoad {
    /// The agent it occupies or runs on (empty when neither).
    agent: String,
    /// It occupies its agent (`holds_agent`).
    holds: bool,
    /// It runs on its agent (active, with an agent).
    active: bool,
}

impl TaskLoad {
    fn of(t: &Task) -> (bool, bool) {
        (holds_agent(t), is_active(t) && !t.agent.is_empty())
    }
}

/// One job's counts.
#[derive(Debug, Default)]
struct JobLoad {
    /// Its tasks, in the job's order.
    tasks: Vec<TaskLoad>,
    /// Tasks occupying an agent.
    running: u32,
    /// Per agent running one of its tasks (not only occupied by one), how many.
    active: Vec<(String, u32)>,
    /// Tasks queued (whether due or not).
    queued: u32,
    /// The earliest time (Unix ms) one of its queued tasks may start; `None` when none is queued.
    next_due: Option<i64>,
}

/// Equal counts for jobs in the same state, whatever order the changes came in.
impl PartialEq for JobLoad {
    fn eq(&self, other: &Self) -> bool {
        let sorted = |l: &JobLoad| {
            let mut active = l.active.clone();
            active.sort();
            active
        };
        (&self.tasks, self.running, self.queued, self.next_due) == (&other.tasks, other.running, other.queued, other.next_due)
            && sorted(self) == sorted(other)
    }
}

impl Loads {
    /// Brings the counts up to date with `jobs`: looks again at the jobs in `changed` and those
    /// not counted yet, and drops those no longer in memory.
    pub fn sync(&mut self, jobs: &HashMap<String, Job>, changed: &HashSet<String>) {
        let gone: Vec<String> = self.jobs.keys().filter(|id| !jobs.contains_key(*id)).cloned().collect();
        for id in gone {
            if let Some(mut old) = self.jobs.remove(&id) {
                self.update(&mut old, &[]);
            }
        }
        for job in jobs.values() {
            if changed.contains(&job.id) || !self.jobs.contains_key(&job.id) {
                self.refresh(job);
            }
        }
    }

    /// Looks at `job` again.
    pub fn refresh(&mut self, job: &Job) {
        match self.jobs.get_mut(&job.id) {
            Some(load) => {
                let mut load = std::mem::take(load);
                self.update(&mut load, &job.tasks);
                *self.jobs.get_mut(&job.id).expect("just found") = load;
            }
            None => {
                let mut load = JobLoad::default();
                self.update(&mut load, &job.tasks);
                self.jobs.insert(job.id.clone(), load);
            }
        }
    }

    /// Moves the counts of `load` (and the sums) to `tasks`.
    fn update(&mut self, load: &mut JobLoad, tasks: &[Task]) {
        if load.tasks.len() != tasks.len() {
            // A job's tasks are fixed when it is submitted; a job gone has none.
            for was in std::mem::take(&mut load.tasks) {
                self.task_moved(load, &was, false);
            }
            load.tasks = vec![TaskLoad::default(); tasks.len()];
        }
        let (mut queued, mut next_due) = (0, None::<i64>);
        for (i, t) in tasks.iter().enumerate() {
            if t.state() == JobState::Pending {
                queued += 1;
                next_due = Some(next_due.map_or(t.not_before_unix_ms, |d| d.min(t.not_before_unix_ms)));
            }
            let (holds, active) = TaskLoad::of(t);
            let was = &load.tasks[i];
            let same_agent = !(holds || active) || was.agent == t.agent;
            if (was.holds, was.active) == (holds, active) && same_agent {
                continue;
            }
            let was = std::mem::take(&mut load.tasks[i]);
            self.task_moved(load, &was, false);
            let now = TaskLoad { agent: if holds || active { t.agent.clone() } else { String::new() }, holds, active };
            self.task_moved(load, &now, true);
            load.tasks[i] = now;
        }
        self.queued = self.queued + queued as usize - load.queued as usize;
        (load.queued, load.next_due) = (queued, next_due);
    }

    /// Counts a task in (`add`) or out of `load` and the sums.
    fn task_moved(&mut self, load: &mut JobLoad, task: &TaskLoad, add: bool) {
        if task.holds {
            let open = self.open_of(&task.agent);
            load.running = if add { load.running + 1 } else { load.running.saturating_sub(1) };
            self.held = if add { self.held + 1 } else { self.held.saturating_sub(1) };
            match self.agents.get_mut(task.agent.as_str()) {
                Some(n) if add => *n += 1,
                Some(n) => {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        self.agents.remove(task.agent.as_str());
                    }
                }
                // An agent's id is copied only when it gets its first task.
                None if add => drop(self.agents.insert(task.agent.clone(), 1)),
                None => {}
            }
            self.agent_changed(&task.agent, open);
        }
        if task.active {
            match load.active.iter().position(|(agent, _)| *agent == task.agent) {
                Some(at) if add => load.active[at].1 += 1,
                Some(at) => {
                    load.active[at].1 -= 1;
                    if load.active[at].1 == 0 {
                        load.active.swap_remove(at);
                    }
                }
                None if add => load.active.push((task.agent.clone(), 1)),
                None => {}
            }
        }
    }

    /// Agent `id` attached with `capacity` slots.
    pub fn attach(&mut self, id: &str, capacity: u32) {
        let open = self.open_of(id);
        self.capacity.insert(id.to_string(), capacity.max(1));
        self.agent_changed(id, open);
    }

    /// Agent `id` is no longer attached (its tasks are still counted until they move).
    pub fn detach(&mut self, id: &str) {
        let open = self.open_of(id);
        self.capacity.remove(id);
        self.agent_changed(id, open);
    }

    /// Free slots of agent `id` (none unless attached).
    fn open_of(&self, id: &str) -> usize {
        self.capacity.get(id).map_or(0, |&slots| slots.saturating_sub(self.running(id)) as usize)
    }

    /// Agent `id`, which had `before` free slots, changed: updates the free agents and slots.
    fn agent_changed(&mut self, id: &str, before: usize) {
        let now = self.open_of(id);
        self.open_slots = self.open_slots + now - before;
        if now > 0 && !self.free.contains(id) {
            self.free.insert(id.to_string());
        } else if now == 0 {
            self.free.remove(id);
        }
    }

    /// Free slots over all attached agents.
    pub fn open_slots(&self) -> usize {
        self.open_slots
    }

    /// The attached agents with a free slot.
    pub fn free(&self) -> impl Iterator<Item = &str> {
        self.free.iter().map(String::as_str)
    }

    /// Tasks occupying `agent`.
    pub fn running(&self, agent: &str) -> u32 {
        self.agents.get(agent).copied().unwrap_or(0)
    }

    /// Tasks of job `id` occupying an agent.
    pub fn job_running(&self, id: &str) -> u32 {
        self.jobs.get(id).map_or(0, |l| l.running)
    }

    /// Tasks queued and tasks occupying an agent, over all jobs.
    pub fn totals(&self) -> (usize, usize) {
        (self.queued, self.held)
    }

    /// Each (agent, job id) pair where the agent runs a task of the job.
    pub fn active(&self) -> impl Iterator<Item = (&str, &str)> {
        self.jobs.iter().flat_map(|(job, l)| l.active.iter().map(move |(agent, _)| (agent.as_str(), job.as_str())))
    }

    /// Whether job `id` has a queued task that may start at `now` (Unix ms).
    pub fn waiting(&self, id: &str, now: i64) -> bool {
        self.jobs.get(id).and_then(|l| l.next_due).is_some_and(|due| due <= now)
    }

    /// Panics unless the counts equal those of `jobs` counted afresh (debug builds check this
    /// every turn, so a change of a task that does not mark its job changed fails the tests).
    pub fn check(&self, jobs: &HashMap<String, Job>) {
        let mut fresh = Loads::default();
        for (id, &slots) in &self.capacity {
            fresh.attach(id, slots);
        }
        fresh.sync(jobs, &HashSet::default());
        let sorted = |m: &HashMap<String, u32>| {
            let mut v: Vec<(String, u32)> = m.iter().map(|(k, n)| (k.clone(), *n)).collect();
            v.sort();
            v
        };
        assert_eq!(sorted(&self.agents), sorted(&fresh.agents), "running tasks per agent drifted from the jobs");
        assert_eq!(self.totals(), fresh.totals(), "the queued and running totals drifted from the jobs");
        let mut free = (self.free().collect::<Vec<_>>(), fresh.free().collect::<Vec<_>>());
        free.0.sort();
        free.1.sort();
        assert_eq!(free.0, free.1, "the agents with a free slot drifted from the jobs");
        assert_eq!(self.open_slots, fresh.open_slots, "the free slots drifted from the jobs");
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
        assert_eq!(loads.totals(), (1, 3));
        assert_eq!(pairs(&loads), [("a", "j1"), ("a", "j2"), ("b", "j1")]);
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
        assert_eq!(loads.totals(), (0, 3));
        assert_eq!(pairs(&loads), [("a", "j1"), ("b", "j1"), ("c", "j1")]);

        // A job leaving memory takes its counts with it.
        jobs.remove("j1");
        loads.sync(&jobs, &HashSet::default());
        assert_eq!((loads.running("a"), loads.running("b"), loads.running("c")), (0, 0, 0));
        assert_eq!((loads.totals(), pairs(&loads).len()), ((0, 0), 0));
        loads.check(&jobs);
    }

    #[test]
    fn a_cancelled_task_not_yet_confirmed_occupies_its_agent_without_running_there() {
        let mut jobs = HashMap::default();
        jobs.insert("j".to_string(), job("j", vec![task(JobState::Cancelled, "a", 0), task(JobState::Running, "b", 0)]));
        let mut loads = Loads::default();
        loads.sync(&jobs, &HashSet::default());
        assert_eq!((loads.running("a"), loads.totals()), (1, (0, 2)));
        assert_eq!(pairs(&loads), [("b", "j")], "bandwidth goes only where a task runs");
    }

    #[test]
    fn agents_with_a_free_slot_follow_their_tasks_and_attachment() {
        let free = |l: &Loads| {
            let mut v: Vec<&str> = l.free().collect();
            v.sort();
            v.into_iter().map(str::to_string).collect::<Vec<_>>()
        };
        let mut jobs = HashMap::default();
        jobs.insert("j".to_string(), job("j", vec![task(JobState::Running, "a", 0), task(JobState::Running, "b", 0)]));
        let mut loads = Loads::default();
        loads.attach("a", 2);
        loads.attach("b", 1);
        loads.attach("c", 0);
        assert_eq!((free(&loads), loads.open_slots()), (vec!["a".to_string(), "b".into(), "c".into()], 4), "capacity 0 counts as 1");
        loads.sync(&jobs, &HashSet::default());
        assert_eq!((free(&loads), loads.open_slots()), (vec!["a".to_string(), "c".into()], 2), "b's one slot is taken");
        jobs.get_mut("j").unwrap().tasks[1].set_state(JobState::Succeeded);
        loads.sync(&jobs, &["j".to_string()].into_iter().collect());
        assert_eq!(free(&loads), ["a", "b", "c"]);
        loads.detach("a");
        assert_eq!((free(&loads), loads.open_slots()), (vec!["b".to_string(), "c".into()], 2), "a detached agent is never free");
        loads.attach("b", 3);
        assert_eq!(loads.open_slots(), 4, "attaching again with more slots");
        loads.check(&jobs);
    }

    fn pairs(loads: &Loads) -> Vec<(&str, &str)> {
        let mut pairs: Vec<(&str, &str)> = loads.active().collect();
        pairs.sort();
        pairs
    }
}
