//! Three coordinators on etcd (Debian `etcd-server`, on loopback; one member, or a cluster of
//! three): one leads and serves, two wait as standbys listening on nothing. Agents and the CLI
//! are given all three addresses. Under 20 running tasks the leader is killed with SIGKILL, or
//! every etcd member is restarted: a coordinator leads again, the agents hand their tasks over,
//! and every task ends exactly once.

use std::time::{Duration, Instant};

use hyperexport_tests::*;
use serde_json::Value;

const TTL: &str = "2";
const TASKS: usize = 20;
/// One group at a time: each is nine processes on two cores, and leases are timed.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// An HA group of three coordinators and two agents running one job of 20 tasks.
struct Group {
    sb: Sandbox,
    etcd: Vec<Etcd>,
    /// Between the first coordinator and etcd, when asked for.
    proxy: Option<Proxy>,
    coordinators: Vec<PendingCoordinator>,
    _agents: Vec<Service>,
    all: String,
    job: String,
}

impl Group {
    /// Starts etcd with `members`, the coordinators and agents, and the job; returns once all
    /// its tasks are on agents.
    fn start(members: usize) -> Group {
        Group::start_with(members, false)
    }

    /// Like [`Group::start`]; with `proxied`, the first coordinator reaches etcd through a
    /// proxy that the test can cut, and leads (the others start once it does).
    fn start_with(members: usize, proxied: bool) -> Group {
        let sb = Sandbox::new();
        let etcd = sb.start_etcd_cluster("etcd", members);
        let vms = sb.path("vms");
        std::fs::create_dir_all(&vms).unwrap();
        let names: Vec<String> = (0..TASKS).map(|i| format!("vm{i:02}")).collect();
        for (i, n) in names.iter().enumerate() {
            write_image(&vms.join(format!("{n}.img")), 16 << 20, &[(0, random_bytes(16 << 20, i as u64 + 1))]);
        }
        let store = etcd_url(&etcd);
        let proxy = proxied.then(|| Proxy::start(&etcd[0].addr));
        let first_store = proxy.as_ref().map_or(store.clone(), |p| format!("etcd://{}", p.addr));
        let flags = |store: &str| args(&["--store", store, "--etcd-ttl", TTL, "--heartbeat-ms", "300"]);
        let spawn = |i: usize, store: &str| {
            let f = flags(store);
            sb.spawn_coordinator(&format!("c{i}"), &format!("127.0.0.1:{}", free_port()), &f.iter().map(String::as_str).collect::<Vec<_>>())
        };
        let mut coordinators = vec![spawn(0, &first_store)];
        if proxied {
            wait_until(Duration::from_secs(30), "the proxied coordinator to lead", || coordinators[0].serving());
        }
        coordinators.extend((1..3).map(|i| spawn(i, &store)));
        wait_until(Duration::from_secs(30), "one coordinator to lead", || coordinators.iter().any(PendingCoordinator::serving));
        let all = coordinators.iter().map(|c| c.addr.as_str()).collect::<Vec<_>>().join(",");
        // Four 4 MiB chunks per task at 1 s each: every task runs for about 4 s.
        let env = [("HYPEREXPORT_TEST_CHUNK_DELAY_MS", "1000")];
        let agents = (0..2).map(|i| sb.start_agent_at(&all, "eu", &vms, &format!("agent{i}"), &["--capacity", "10"], &env)).collect();
        let mut group = Group { sb, etcd, proxy, coordinators, _agents: agents, all, job: String::new() };
        wait_until(Duration::from_secs(30), "both agents to attach", || {
            let list: Value = serde_json::from_str(&group.sb.ok(&group.with(&["vms", "--output", "json"])).stdout).unwrap();
            list.as_array().unwrap().len() == 2 * TASKS
        });
        let mut submit = group.with(&["export", "--to", &format!("file://{}", group.sb.path("repo").display())]);
        for n in &names {
            submit.extend(args(&["--vm", n]));
        }
        group.job = group.sb.ok(&submit).stdout.trim().to_string();
        wait_until(Duration::from_secs(30), "all 20 tasks on agents", || group.tasks("running") + group.tasks("scheduled") == TASKS);
        group
    }

    /// `parts` with `--coordinator` naming the whole group.
    fn with(&self, parts: &[&str]) -> Vec<String> {
        let mut a = args(parts);
        a.extend(args(&["--coordinator", &self.all]));
        a
    }

    /// How many tasks of the job are in `state`.
    fn tasks(&self, state: &str) -> usize {
        let jobs: Value = serde_json::from_str(&self.sb.ok(&self.with(&["jobs", "--output", "json"])).stdout).unwrap();
        let job = jobs.as_array().unwrap().iter().find(|j| j["id"] == self.job.as_str()).cloned().unwrap_or(Value::Null);
        job["tasks"].as_array().map_or(0, |t| t.iter().filter(|t| t["state"] == state).count())
    }

    fn leader(&self) -> Option<usize> {
        self.coordinators.iter().position(PendingCoordinator::serving)
    }

    /// Follows the job to its end through the group, then checks that every task succeeded
    /// once: one point per VM, and the agents accepted assignments of rising terms only.
    fn finishes_once(&self) {
        self.sb.ok(&self.with(&["watch", &self.job]));
        assert_eq!(self.tasks("succeeded"), TASKS, "every task succeeded");
        assert_eq!(point_count(&self.sb.path("repo")), TASKS, "one point per VM: none was made twice");
        for agent in ["agent0", "agent1"] {
            let terms = self.sb.accepted_terms(agent);
            assert!(terms.iter().all(|t| *t > 0) && terms.is_sorted(), "{agent} accepted terms {terms:?}");
        }
    }
}

/// `jobs` through one coordinator's address alone (a standby forwards to the leader; during a
/// takeover it may not listen for a moment).
fn jobs_through(g: &Group, addr: &str) -> usize {
    let list = args(&["jobs", "--output", "json", "--coordinator", addr]);
    let mut out = String::new();
    wait_until(Duration::from_secs(10), &format!("an answer through {addr}"), || {
        let r = g.sb.run(&list);
        out = r.stdout;
        r.code == Some(0)
    });
    serde_json::from_str::<Value>(&out).unwrap().as_array().unwrap().len()
}

fn leader_killed(members: usize) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut g = Group::start(members);
    let leader = g.leader().unwrap();
    for c in &g.coordinators {
        assert_eq!(jobs_through(&g, &c.addr), 1, "the leader and both standbys answer");
    }
    g.coordinators[leader].kill();
    let killed = Instant::now();
    wait_until(Duration::from_secs(10), "a standby to lead", || g.leader().is_some());
    let took = killed.elapsed();
    eprintln!("a new leader served {took:?} after the old one was killed ({members} etcd members)");
    assert!(took < Duration::from_secs(5), "a new leader took {took:?}");
    for (i, c) in g.coordinators.iter().enumerate().filter(|(i, _)| *i != leader) {
        assert_eq!(jobs_through(&g, &c.addr), 1, "coordinator {i} answers after the takeover");
    }
    g.finishes_once();
}

#[test]
fn the_leader_killed_mid_job_a_standby_takes_over_and_every_task_ends_once() {
    leader_killed(1);
}

#[test]
fn the_same_on_a_three_member_etcd_cluster() {
    leader_killed(3);
}

#[test]
fn every_etcd_member_restarted_mid_job_the_group_leads_again_and_the_job_finishes() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut g = Group::start(3);
    for member in &mut g.etcd {
        member.kill();
    }
    std::thread::sleep(Duration::from_secs(3));
    for member in &mut g.etcd {
        member.restart();
    }
    wait_until(Duration::from_secs(60), "etcd to answer again", || g.etcd.iter().all(Etcd::healthy));
    wait_until(Duration::from_secs(30), "a coordinator to lead again", || g.leader().is_some());
    g.finishes_once();
    let logs: String = (0..3).map(|i| std::fs::read_to_string(g.sb.path(&format!("c{i}.log"))).unwrap_or_default()).collect();
    assert!(logs.contains("stepping down"), "the leader stepped down while etcd was away:\n{logs}");
}

#[test]
fn a_leader_cut_off_from_etcd_stops_before_its_lease_expires_and_no_two_lead_at_once() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let g = Group::start_with(1, true);
    assert_eq!(g.leader(), Some(0), "the proxied coordinator leads");
    g.proxy.as_ref().unwrap().cut();
    let cut = Instant::now();
    // Watch both: the old leader must have stopped serving before another one starts.
    let (mut old_stopped, mut new_started) = (None, None);
    while new_started.is_none() && cut.elapsed() < Duration::from_secs(15) {
        if old_stopped.is_none() && !g.coordinators[0].serving() {
            old_stopped = Some(cut.elapsed());
        }
        if g.coordinators[1..].iter().any(PendingCoordinator::serving) {
            new_started = Some(cut.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!("cut off: the old leader stopped serving after {old_stopped:?}, a new one served after {new_started:?}");
    let (stopped, started) = (old_stopped.expect("the cut-off leader stopped serving"), new_started.expect("a new leader"));
    assert!(stopped < Duration::from_secs(2), "the cut-off leader served {stopped:?}, past its 2 s lease");
    assert!(stopped < started, "two coordinators served at once");
    g.finishes_once();
}

#[test]
fn a_standby_answers_job_reads_from_etcd_itself_even_while_the_leader_is_frozen() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let sb = Sandbox::new();
    let etcd = sb.start_etcd("etcd");
    let vms = sb.path("vms");
    std::fs::create_dir_all(&vms).unwrap();
    write_image(&vms.join("web.img"), 4 << 20, &[(0, random_bytes(4 << 20, 7))]);
    // A long lease: the frozen leader still leads while the standby is asked.
    let flags = ["--store", &etcd.url(), "--etcd-ttl", "30", "--heartbeat-ms", "300"];
    let cs: Vec<PendingCoordinator> =
        (0..2).map(|i| sb.spawn_coordinator(&format!("c{i}"), &format!("127.0.0.1:{}", free_port()), &flags)).collect();
    wait_until(Duration::from_secs(30), "one coordinator to lead", || cs.iter().any(PendingCoordinator::serving));
    let leader = cs.iter().position(PendingCoordinator::serving).unwrap();
    let (at_leader, at_standby) = (args(&["--coordinator", &cs[leader].addr]), args(&["--coordinator", &cs[1 - leader].addr]));
    let _agent = sb.start_agent_at(&cs[leader].addr, "eu", &vms, "agent", &[], &[]);
    wait_until(Duration::from_secs(30), "the agent", || sb.run(&[args(&["vms"]), at_leader.clone()].concat()).stdout.contains("web"));
    let target = format!("file://{}", sb.path("repo").display());
    let id = sb.ok(&[args(&["export", "--vm", "web", "--to", &target]), at_leader.clone()].concat()).stdout.trim().to_string();
    sb.ok(&[args(&["watch", &id]), at_leader].concat());

    // Frozen, the leader accepts connections and answers nothing: a call forwarded to it hangs.
    cs[leader].signal(libc::SIGSTOP);
    let mut list = sb.spawn(&[args(&["jobs", "--output", "json"]), at_standby].concat(), &[]);
    let asked = Instant::now();
    let status = loop {
        if let Some(status) = list.try_wait().unwrap() {
            break status;
        }
        if asked.elapsed() > Duration::from_secs(10) {
            let _ = list.kill();
            cs[leader].signal(libc::SIGCONT);
            panic!("the standby did not answer the job list in 10 s while the leader was frozen");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    cs[leader].signal(libc::SIGCONT);
    let mut out = String::new();
    std::io::Read::read_to_string(list.stdout.as_mut().unwrap(), &mut out).unwrap();
    assert!(status.success(), "jobs through the standby failed: {out}");
    let jobs: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(jobs[0]["id"], id.as_str());
    assert_eq!(jobs[0]["state"], "succeeded", "the standby read the job's last state from etcd");
    assert!(!cs[1 - leader].serving(), "the standby still stands by (it answered as a standby)");
}
