//! Three coordinators on one etcd (Debian `etcd-server`, on loopback): one leads and serves,
//! two wait as standbys listening on nothing. Agents and the CLI are given all three addresses.
//! The leader is killed with SIGKILL while 20 tasks run: a standby leads within 5 s (TTL 2 s),
//! the agents attach to it and hand over their tasks, and every task ends exactly once.

use std::time::{Duration, Instant};

use hyperexport_tests::*;
use serde_json::Value;

const TTL: &str = "2";
const TASKS: usize = 20;

#[test]
fn the_leader_killed_mid_job_a_standby_takes_over_and_every_task_ends_once() {
    let sb = Sandbox::new();
    let etcd = sb.start_etcd("etcd");
    let vms = sb.path("vms");
    std::fs::create_dir_all(&vms).unwrap();
    let names: Vec<String> = (0..TASKS).map(|i| format!("vm{i:02}")).collect();
    for (i, n) in names.iter().enumerate() {
        write_image(&vms.join(format!("{n}.img")), 16 << 20, &[(0, random_bytes(16 << 20, i as u64 + 1))]);
    }
    let store = etcd.url();
    let flags = ["--store", store.as_str(), "--etcd-ttl", TTL, "--heartbeat-ms", "300"];
    let mut group: Vec<PendingCoordinator> =
        (0..3).map(|i| sb.spawn_coordinator(&format!("c{i}"), &format!("127.0.0.1:{}", free_port()), &flags)).collect();
    wait_until(Duration::from_secs(30), "one coordinator to lead", || group.iter().any(PendingCoordinator::serving));
    let all = group.iter().map(|c| c.addr.as_str()).collect::<Vec<_>>().join(",");
    let with = |parts: &[&str]| {
        let mut a = args(parts);
        a.extend(args(&["--coordinator", &all]));
        a
    };
    // Four 4 MiB chunks per task at 1 s each: every task runs for about 4 s.
    let env = [("HYPEREXPORT_TEST_CHUNK_DELAY_MS", "1000")];
    let _agents: Vec<Service> =
        (0..2).map(|i| sb.start_agent_at(&all, "eu", &vms, &format!("agent{i}"), &["--capacity", "10"], &env)).collect();
    wait_until(Duration::from_secs(30), "both agents to attach", || {
        let list: Value = serde_json::from_str(&sb.ok(&with(&["vms", "--output", "json"])).stdout).unwrap();
        list.as_array().unwrap().len() == 2 * TASKS
    });
    let mut submit = with(&["export", "--to", &format!("file://{}", sb.path("repo").display())]);
    for n in &names {
        submit.extend(args(&["--vm", n]));
    }
    let job = sb.ok(&submit).stdout.trim().to_string();
    let tasks = |state: &str| -> usize {
        let jobs: Value = serde_json::from_str(&sb.ok(&with(&["jobs", "--output", "json"])).stdout).unwrap();
        let job = jobs.as_array().unwrap().iter().find(|j| j["id"] == job.as_str()).cloned().unwrap_or(Value::Null);
        job["tasks"].as_array().map_or(0, |t| t.iter().filter(|t| t["state"] == state).count())
    };
    wait_until(Duration::from_secs(30), "all 20 tasks on agents", || tasks("running") + tasks("scheduled") == TASKS);

    let leader = group.iter().position(PendingCoordinator::serving).unwrap();
    group[leader].kill();
    let killed = Instant::now();
    wait_until(Duration::from_secs(10), "a standby to lead", || group.iter().enumerate().any(|(i, c)| i != leader && c.serving()));
    let took = killed.elapsed();
    eprintln!("a new leader served {took:?} after the old one was killed");
    assert!(took < Duration::from_secs(5), "a new leader took {took:?}");

    // The CLI, given the whole group, keeps working: it follows the job to its end.
    sb.ok(&with(&["watch", &job]));
    assert_eq!(tasks("succeeded"), TASKS, "every task succeeded");
    assert_eq!(point_count(&sb.path("repo")), TASKS, "one point per VM: none was made twice");
    let terms: Vec<u64> = (0..2).flat_map(|i| sb.accepted_terms(&format!("agent{i}"))).collect();
    assert!(terms.len() >= TASKS && terms.iter().all(|t| *t > 0), "accepted assignments and their terms: {terms:?}");
}
