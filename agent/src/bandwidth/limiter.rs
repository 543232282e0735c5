//! The agent's bandwidth limiter: one bucket for all its data streams, one per job inside it, the
//! rates the coordinator last sent (kept while it is away: never unlimited because it is gone),
//! and the demand reported back with each heartbeat.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use hyperexport_proto::v1::{JobDemand, Rates};

use super::adaptive::Aimd;
use super::bucket::{Rate, Ticket, TokenBucket};

/// Bytes a bucket may hold after a pause when the coordinator names no burst: a quarter of a
/// second at its rate, at least [`MIN_BURST`].
const BURST_SECONDS: f64 = 0.25;
/// The smallest default burst.
const MIN_BURST: f64 = 1024.0 * 1024.0;
/// Longest single sleep while waiting for tokens, so that cancels and new rates are seen soon.
const WAIT_STEP: Duration = Duration::from_millis(100);

/// What a byte moved is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Read from a source.
    Read,
    /// Written to a target or sent to a replica.
    Upload,
}

/// The limiter, shared by every task of the agent.
#[derive(Default)]
pub struct Limiter {
    state: Mutex<State>,
    next_path: AtomicU64,
}

struct JobState {
    bucket: TokenBucket,
    class: String,
    /// Bytes taken and whether it waited, since the last report.
    moved: u64,
    waited: bool,
    /// Named in the last `Rates`.
    listed: bool,
}

struct State {
    agent: TokenBucket,
    /// The agent's rate as allocated (before the adaptive factor).
    allocated: Rate,
    jobs: HashMap<String, JobState>,
    reads: bool,
    uploads: bool,
    adaptive: bool,
    /// Factors asked for by the paths of open replication connections.
    paths: HashMap<u64, f64>,
    reported: Instant,
}

impl Default for State {
    fn default() -> Self {
        let now = Instant::now();
        State {
            agent: TokenBucket::new(f64::INFINITY, MIN_BURST, now),
            allocated: f64::INFINITY,
            jobs: HashMap::new(),
            reads: true,
            uploads: true,
            adaptive: false,
            paths: HashMap::new(),
            reported: now,
        }
    }
}

fn wire(bps: u64) -> Rate {
    if bps == 0 { f64::INFINITY } else { bps as Rate }
}

fn burst_for(rate: Rate, given: u64) -> f64 {
    if given > 0 {
        given as f64
    } else if rate.is_finite() {
        (rate * BURST_SECONDS).max(MIN_BURST)
    } else {
        MIN_BURST
    }
}

impl State {
    fn effective(&self) -> Rate {
        let factor = if self.adaptive { self.paths.values().copied().fold(1.0, f64::min) } else { 1.0 };
        self.allocated * factor
    }

    fn job(&mut self, job: &str, now: Instant) -> &mut JobState {
        self.jobs.entry(job.to_string()).or_insert_with(|| JobState {
            bucket: TokenBucket::new(f64::INFINITY, MIN_BURST, now),
            class: String::new(),
            moved: 0,
            waited: false,
            listed: false,
        })
    }
}

impl Limiter {
    /// A limiter with no limits until the coordinator sends rates.
    pub fn new() -> Arc<Limiter> {
        Arc::new(Limiter::default())
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies the rates the coordinator sent.
    pub fn apply(&self, rates: &Rates) {
        let now = Instant::now();
        let mut s = self.lock();
        s.allocated = wire(rates.agent_bps);
        s.adaptive = rates.adaptive;
        (s.reads, s.uploads) = match rates.counts.as_str() {
            "reads" => (true, false),
            "uploads" => (false, true),
            _ => (true, true),
        };
        let effective = s.effective();
        s.agent.set(effective, burst_for(effective, 0), now);
        for j in s.jobs.values_mut() {
            j.listed = false;
        }
        for r in &rates.jobs {
            let rate = wire(r.bps);
            let j = s.job(&r.job_id, now);
            j.bucket.set(rate, burst_for(rate, r.burst), now);
            j.class = r.class.clone();
            j.listed = true;
        }
        // Jobs the coordinator no longer names run under the agent's bucket alone.
        for j in s.jobs.values_mut().filter(|j| !j.listed) {
            j.bucket.set(f64::INFINITY, MIN_BURST, now);
        }
        crate::metrics::bandwidth_rates(s.effective(), s.jobs.values().filter(|j| j.listed).map(|j| (j.class.as_str(), j.bucket.rate())));
    }

    /// What each job moved since the last report, and whether it waited for tokens; jobs that
    /// neither moved nor are named by the coordinator are forgotten.
    pub fn report(&self) -> Vec<JobDemand> {
        let now = Instant::now();
        let mut s = self.lock();
        let seconds = now.saturating_duration_since(s.reported).as_secs_f64().max(1e-3);
        s.reported = now;
        s.jobs.retain(|_, j| j.listed || j.moved > 0 || j.waited);
        let mut out: Vec<JobDemand> = s
            .jobs
            .iter_mut()
            .map(|(id, j)| {
                let d = JobDemand { job_id: id.clone(), achieved_bps: j.moved as f64 / seconds, backlogged: j.waited };
                (j.moved, j.waited) = (0, false);
                d
            })
            .collect();
        out.sort_by(|a, b| a.job_id.cmp(&b.job_id));
        out
    }

    /// Takes `bytes` for `job`; the tickets to wait for, if it ran into debt.
    fn take(&self, job: &str, direction: Direction, bytes: u64) -> Option<(Option<Ticket>, Option<Ticket>)> {
        let now = Instant::now();
        let mut s = self.lock();
        let counted = match direction {
            Direction::Read => s.reads,
            Direction::Upload => s.uploads,
        };
        if !counted {
            return None;
        }
        let agent = s.agent.take(bytes, now);
        let j = s.job(job, now);
        crate::metrics::bandwidth_bytes(&j.class, direction, bytes);
        j.moved += bytes;
        let own = j.bucket.take(bytes, now);
        (agent.is_some() || own.is_some()).then_some((agent, own))
    }

    /// How long the holder of these tickets must still wait; marks the job as backlogged.
    fn wait_for(&self, job: &str, tickets: (Option<Ticket>, Option<Ticket>)) -> Option<Duration> {
        let now = Instant::now();
        let mut s = self.lock();
        let agent = tickets.0.and_then(|t| s.agent.wait(t, now));
        let j = s.job(job, now);
        let own = tickets.1.and_then(|t| j.bucket.wait(t, now));
        let wait = agent.max(own);
        if wait.is_some() {
            j.waited = true;
        }
        wait
    }

    /// Takes `bytes` for `job`, sleeping this thread until they may go; false if `cancel` was
    /// set meanwhile.
    pub fn wait_blocking(&self, job: &str, direction: Direction, bytes: u64, cancel: &AtomicBool) -> bool {
        let Some(tickets) = self.take(job, direction, bytes) else { return true };
        let started = Instant::now();
        while let Some(wait) = self.wait_for(job, tickets) {
            if cancel.load(Ordering::Relaxed) {
                return false;
            }
            std::thread::sleep(wait.min(WAIT_STEP));
        }
        crate::metrics::bandwidth_waited(started.elapsed());
        true
    }

    /// Takes `bytes` for `job`, sleeping this task until they may go.
    pub async fn wait(&self, job: &str, direction: Direction, bytes: u64) {
        let Some(tickets) = self.take(job, direction, bytes) else { return };
        let started = Instant::now();
        while let Some(wait) = self.wait_for(job, tickets) {
            tokio::time::sleep(wait.min(WAIT_STEP)).await;
        }
        crate::metrics::bandwidth_waited(started.elapsed());
    }

    /// Registers a replication connection whose path feeds adaptive mode.
    pub fn path(self: &Arc<Self>) -> PathWatch {
        let id = self.next_path.fetch_add(1, Ordering::Relaxed);
        PathWatch { limiter: Arc::clone(self), id, aimd: Aimd::default() }
    }

    fn set_path_factor(&self, id: u64, factor: Option<f64>) {
        let now = Instant::now();
        let mut s = self.lock();
        match factor {
            Some(f) => s.paths.insert(id, f),
            None => s.paths.remove(&id),
        };
        if s.adaptive {
            let effective = s.effective();
            s.agent.set(effective, burst_for(effective, 0), now);
        }
    }

    /// The agent's rate now (after the adaptive factor); infinity: none.
    pub fn agent_rate(&self) -> Rate {
        self.lock().agent.rate()
    }
}

/// A replication connection's path as adaptive mode sees it; dropped when the connection ends.
pub struct PathWatch {
    limiter: Arc<Limiter>,
    id: u64,
    aimd: Aimd,
}

impl PathWatch {
    /// Takes a sample of the path: its smoothed round trip and packets lost so far.
    pub fn observe(&mut self, rtt: Duration, lost_packets: u64) {
        let factor = self.aimd.observe(rtt, lost_packets);
        self.limiter.set_path_factor(self.id, Some(factor));
    }
}

impl Drop for PathWatch {
    fn drop(&mut self) {
        self.limiter.set_path_factor(self.id, None);
    }
}

/// A task's handle on the limiter: its job and the agent's limiter.
#[derive(Clone)]
pub struct Throttle {
    /// The agent's limiter.
    pub limiter: Arc<Limiter>,
    /// The job the task belongs to.
    pub job: String,
}

impl std::fmt::Debug for Throttle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Throttle").field("job", &self.job).finish_non_exhaustive()
    }
}

impl Throttle {
    /// Waits (this thread) until `bytes` read from a source may go; false if cancelled.
    pub fn read_blocking(&self, bytes: u64, cancel: &AtomicBool) -> bool {
        self.limiter.wait_blocking(&self.job, Direction::Read, bytes, cancel)
    }

    /// Waits (this thread) until `bytes` written to a target may go; false if cancelled.
    pub fn upload_blocking(&self, bytes: u64, cancel: &AtomicBool) -> bool {
        self.limiter.wait_blocking(&self.job, Direction::Upload, bytes, cancel)
    }

    /// Waits (this task) until `bytes` sent to a replica may go.
    pub async fn upload(&self, bytes: u64) {
        self.limiter.wait(&self.job, Direction::Upload, bytes).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyperexport_proto::v1::JobRate;

    fn rates(agent: u64, jobs: &[(&str, u64)], counts: &str) -> Rates {
        Rates {
            agent_bps: agent,
            jobs: jobs.iter().map(|(j, b)| JobRate { job_id: j.to_string(), bps: *b, burst: 1, class: "standard".into() }).collect(),
            counts: counts.into(),
            adaptive: false,
        }
    }

    #[test]
    fn unlimited_until_told_and_what_counts_is_configurable() {
        let l = Limiter::new();
        let no = AtomicBool::new(false);
        assert!(l.take("j", Direction::Read, 1 << 30).is_none());
        l.apply(&rates(1000, &[("j", 1000)], "uploads"));
        assert!(l.take("j", Direction::Read, 1 << 30).is_none(), "reads are not counted");
        assert!(l.take("j", Direction::Upload, 1 << 30).is_some());
        assert!(l.wait_blocking("j", Direction::Read, 1 << 30, &no));
    }

    #[test]
    fn a_job_rate_paces_its_bytes_and_reports_demand() {
        let l = Limiter::new();
        l.apply(&rates(0, &[("slow", 100_000)], "both"));
        let no = AtomicBool::new(false);
        let started = Instant::now();
        for _ in 0..3 {
            assert!(l.wait_blocking("slow", Direction::Read, 10_000, &no));
        }
        // 30,000 bytes at 100,000/s with a burst of 1 byte: about 0.3 s.
        assert!(started.elapsed() >= Duration::from_millis(280), "{:?}", started.elapsed());
        assert!(l.wait_blocking("fast", Direction::Read, 10 << 20, &no), "other jobs are not held back");
        let report = l.report();
        assert_eq!(report.iter().map(|d| (d.job_id.as_str(), d.backlogged)).collect::<Vec<_>>(), [("fast", false), ("slow", true)]);
        assert!(report[1].achieved_bps > 0.0);
        // The next report: the listed job stays (achieving nothing), the unlisted idle one goes.
        let next = l.report();
        assert_eq!(next.iter().map(|d| (d.job_id.as_str(), d.achieved_bps)).collect::<Vec<_>>(), [("slow", 0.0)]);
    }

    #[test]
    fn a_cancel_ends_the_wait() {
        let l = Limiter::new();
        l.apply(&rates(1, &[], "both"));
        let cancel = AtomicBool::new(true);
        assert!(!l.wait_blocking("j", Direction::Read, 4 << 20, &cancel), "4 MiB at 1 B/s is far past the 1 MiB burst");
    }

    #[test]
    fn adaptive_mode_lowers_the_agent_rate_while_a_path_is_congested() {
        let l = Limiter::new();
        l.apply(&Rates { adaptive: true, ..rates(1_000_000, &[], "both") });
        let mut path = l.path();
        path.observe(Duration::from_millis(10), 0);
        assert_eq!(l.agent_rate(), 1_000_000.0);
        path.observe(Duration::from_millis(100), 0);
        assert_eq!(l.agent_rate(), 700_000.0);
        drop(path);
        assert_eq!(l.agent_rate(), 1_000_000.0);
    }
}
