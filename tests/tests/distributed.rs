//! The control plane end to end with real processes: a coordinator and agents on loopback run
//! export jobs; tasks go to agents of their VM's region, survive a killed agent (resuming from
//! the last checkpoint) and a killed coordinator, and a cancel really stops the work.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hyperexport_tests::*;
use serde_json::Value;

const MIB: u64 = 1 << 20;
const STALL: &str = "HYPEREXPORT_TEST_STALL_AFTER_CHUNKS";
const DELAY: &str = "HYPEREXPORT_TEST_CHUNK_DELAY_MS";

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

/// A raw disk of `size` random bytes at `dir/name.img` (a VM called `name`).
fn vm(dir: &Path, name: &str, size: u64, seed: u64) {
    std::fs::create_dir_all(dir).unwrap();
    write_image(&dir.join(format!("{name}.img")), size, &[(0, random_bytes(size as usize, seed))]);
}

/// How many VM entries the inventory lists (one per agent serving a VM).
fn inventory_len(sb: &Sandbox, c: &Coordinator) -> usize {
    let list: Value = serde_json::from_str(&sb.ok(&c.cmd(&["vms", "--output", "json"])).stdout).unwrap();
    list.as_array().unwrap().len()
}

fn submit(sb: &Sandbox, c: &Coordinator, vms: &[&str], target: &Path) -> String {
    let mut a = c.cmd(&["export", "--to", &format!("file://{}", target.display())]);
    for v in vms {
        a.extend(args(&["--vm", v]));
    }
    sb.ok(&a).stdout.trim().to_string()
}

fn task(job: &Value, vm: &str) -> Value {
    job["tasks"].as_array().unwrap().iter().find(|t| t["vm"] == vm).cloned().unwrap()
}

/// Restores `point` from the repository at `repo` and checks it equals `image`.
fn assert_restores(sb: &Sandbox, repo: &str, point: &str, image: &Path) {
    let out = sb.path(&format!("{point}.restored"));
    let mut a = args(&["restore", point, "--to", out.to_str().unwrap()]);
    a.extend(sb.repo_args(repo));
    sb.ok(&a);
    assert_eq!(sha256_file(&out), sha256_file(image), "point {point} does not restore {}", image.display());
}

/// The points in a repository, as (vm, id).
fn points(sb: &Sandbox, repo: &str) -> Vec<(String, String)> {
    let mut a = args(&["points", "--output", "json"]);
    a.extend(sb.repo_args(repo));
    if !sb.path(repo).join("config").exists() {
        return Vec::new();
    }
    let list: Value = serde_json::from_str(&sb.ok(&a).stdout).unwrap();
    list.as_array().unwrap().iter().map(|p| (p["vm"].as_str().unwrap().to_string(), p["id"].as_str().unwrap().to_string())).collect()
}

#[test]
fn six_vms_in_two_regions_run_where_they_live_and_restore_bit_identical() {
    let sb = Sandbox::new();
    let (eu, us) = (sb.path("eu"), sb.path("us"));
    let names = ["eu-web", "eu-db", "eu-app", "us-web", "us-db", "us-app"];
    for (i, name) in names.iter().enumerate() {
        let dir = if name.starts_with("eu") { &eu } else { &us };
        vm(dir, name, (3 + i as u64) * MIB + 4096 * i as u64, i as u64 + 1);
    }
    let c = sb.start_coordinator_with("coord", &["--heartbeat-ms", "300"]);
    let _agents = [
        sb.start_agent(&c, "eu", &eu, "eu-1", &[]),
        sb.start_agent(&c, "eu", &eu, "eu-2", &[]),
        sb.start_agent(&c, "us", &us, "us-1", &[]),
    ];
    wait_until(Duration::from_secs(30), "three agents to report nine VM entries", || inventory_len(&sb, &c) == 9);
    let repo = sb.path("repo");
    let job = submit(&sb, &c, &names, &repo);
    let watchers: Vec<_> = (0..2).map(|_| sb.spawn(&c.cmd(&["watch", &job, "--output", "json"]), &[])).collect();
    let mut finals = Vec::new();
    for w in watchers {
        let out = w.wait_with_output().unwrap();
        let stdout = String::from_utf8(out.stdout).unwrap();
        assert_eq!(out.status.code(), Some(0), "watch: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
        let updates: Vec<Value> = stdout.lines().map(|l| serde_json::from_str::<Value>(l).unwrap()["job"].clone()).collect();
        for name in names {
            let done: Vec<u64> = updates.iter().map(|j| task(j, name)["bytes_done"].as_u64().unwrap()).collect();
            assert!(done.windows(2).all(|w| w[0] <= w[1]), "progress of {name} went back: {done:?}");
        }
        finals.push(updates.last().unwrap().clone());
    }
    assert_eq!(finals[0]["state"], "succeeded");
    assert_eq!(finals[0], finals[1], "two watchers saw different final states");
    let (eu_ids, us_ids) = ([sb.agent_id("eu-1"), sb.agent_id("eu-2")], [sb.agent_id("us-1")]);
    for name in names {
        let t = task(&finals[0], name);
        let agent = t["agent"].as_str().unwrap().to_string();
        let home: &[String] = if name.starts_with("eu") { &eu_ids } else { &us_ids };
        assert!(home.contains(&agent), "{name} ran on {agent}, not an agent of its region {home:?}");
        let dir = if name.starts_with("eu") { &eu } else { &us };
        assert_restores(&sb, "repo", t["point"].as_str().unwrap(), &dir.join(format!("{name}.img")));
    }
    assert_eq!(points(&sb, "repo").len(), 6, "one point per VM");
}

#[test]
fn a_killed_agent_s_task_resumes_on_another_agent_from_its_checkpoint() {
    let sb = Sandbox::new();
    let eu = sb.path("eu");
    let size = 80 * MIB;
    vm(&eu, "big", size, 42);
    let heartbeat_timeout = Duration::from_millis(3 * 500);
    let c = sb.start_coordinator_with("coord", &["--heartbeat-ms", "500"]);
    // The first agent stalls after 10 of the disk's 20 chunks: the task is mid-way when it dies.
    let first = sb.start_agent_at(&c.addr, "eu", &eu, "eu-1", &[], &[(STALL, "10")]);
    wait_until(Duration::from_secs(30), "the first agent to attach", || inventory_len(&sb, &c) == 1);
    let repo = sb.path("repo");
    let job = submit(&sb, &c, &["big"], &repo);
    let mut done_at_kill = 0;
    wait_until(Duration::from_secs(60), "a checkpoint of a third of the disk, and progress reported up to it", || {
        let t = task(&sb.job(&c, &job), "big");
        done_at_kill = t["bytes_done"].as_u64().unwrap();
        let checkpoint = t["checkpoint_bytes"].as_u64().unwrap();
        checkpoint >= size / 3 && done_at_kill >= checkpoint
    });
    let _second = sb.start_agent(&c, "eu", &eu, "eu-2", &[]);
    wait_until(Duration::from_secs(30), "the second agent to attach", || inventory_len(&sb, &c) == 2);
    let second_id = sb.agent_id("eu-2");
    let killed = Instant::now();
    first.kill();
    wait_until(2 * heartbeat_timeout, "the task to move to the second agent within 2x the heartbeat timeout", || {
        task(&sb.job(&c, &job), "big")["agent"] == second_id.as_str()
    });
    eprintln!("reassigned {:?} after the kill", killed.elapsed());
    let mut finished = Value::Null;
    wait_until(Duration::from_secs(120), "the job to succeed", || {
        finished = sb.job(&c, &job);
        finished["state"] == "succeeded"
    });
    let t = task(&finished, "big");
    assert_eq!(t["attempt"], 2);
    let read_after = t["bytes_read"].as_u64().unwrap();
    // Bytes read by the resumed attempt that the first had already done.
    let again = read_after.saturating_sub(size - done_at_kill);
    eprintln!("done at kill {done_at_kill}, read after resume {read_after}, read again {again} of {size}");
    assert!(read_after < size, "the resumed attempt read the whole disk again");
    assert!(again < size / 5, "{again} bytes read again, 20% of the disk is {}", size / 5);
    assert_restores(&sb, "repo", t["point"].as_str().unwrap(), &eu.join("big.img"));
    assert_eq!(points(&sb, "repo").len(), 1);
}

#[test]
fn a_silent_agent_s_task_moves_and_the_agent_is_told_when_it_wakes() {
    let sb = Sandbox::new();
    let eu = sb.path("eu");
    vm(&eu, "web", 32 * MIB, 9);
    let c = sb.start_coordinator_with("coord", &["--heartbeat-ms", "300"]);
    let first = sb.start_agent_at(&c.addr, "eu", &eu, "eu-1", &[], &[(STALL, "4")]);
    wait_until(Duration::from_secs(30), "the first agent to attach", || inventory_len(&sb, &c) == 1);
    let job = submit(&sb, &c, &["web"], &sb.path("repo"));
    wait_until(Duration::from_secs(60), "a checkpoint", || task(&sb.job(&c, &job), "web")["checkpoint_bytes"].as_u64().unwrap() > 0);
    let _second = sb.start_agent(&c, "eu", &eu, "eu-2", &[]);
    wait_until(Duration::from_secs(30), "the second agent to attach", || inventory_len(&sb, &c) == 2);
    // SIGSTOP: the stream stays open but the heartbeats stop.
    first.signal(libc::SIGSTOP);
    let second_id = sb.agent_id("eu-2");
    wait_until(Duration::from_millis(2 * 3 * 300), "the task to move within 2x the heartbeat timeout", || {
        task(&sb.job(&c, &job), "web")["agent"] == second_id.as_str()
    });
    first.signal(libc::SIGCONT);
    wait_until(Duration::from_secs(60), "the job to succeed", || sb.job(&c, &job)["state"] == "succeeded");
    wait_until(Duration::from_secs(30), "the woken agent to cancel its stale attempt", || {
        std::fs::read_to_string(sb.path("eu-1.log")).unwrap().contains("TASK_OUTCOME_CANCELLED")
    });
    assert_eq!(points(&sb, "repo").len(), 1, "the stale attempt published a point");
}

#[test]
fn cancel_stops_the_agent_within_two_seconds_and_leaves_no_point() {
    let sb = Sandbox::new();
    let eu = sb.path("eu");
    vm(&eu, "web", 24 * MIB, 7);
    let c = sb.start_coordinator_with("coord", &["--heartbeat-ms", "300"]);
    let _agent = sb.start_agent_at(&c.addr, "eu", &eu, "eu-1", &[], &[(STALL, "2")]);
    wait_until(Duration::from_secs(30), "the agent to attach", || inventory_len(&sb, &c) == 1);
    let job = submit(&sb, &c, &["web"], &sb.path("repo"));
    wait_until(Duration::from_secs(60), "the task to run", || {
        let t = task(&sb.job(&c, &job), "web");
        t["state"] == "running" && t["bytes_done"].as_u64().unwrap() > 0
    });
    let asked = now_ms();
    let cancelled = sb.ok(&c.cmd(&["cancel", &job, "--output", "json"])).result();
    assert_eq!(cancelled["state"], "cancelled");
    let mut stopped = 0;
    wait_until(Duration::from_secs(10), "the agent to confirm the task stopped", || {
        stopped = task(&sb.job(&c, &job), "web")["finished_unix_ms"].as_i64().unwrap();
        stopped != 0
    });
    assert!(stopped - asked <= 2000, "the agent took {} ms to stop", stopped - asked);
    assert!(points(&sb, "repo").is_empty(), "a cancelled export left a point");
    assert!(std::fs::read_to_string(sb.path("eu-1.log")).unwrap().contains("TASK_OUTCOME_CANCELLED"));
}

#[test]
fn a_killed_coordinator_loses_no_job_and_running_tasks_finish_once() {
    let sb = Sandbox::new();
    let eu = sb.path("eu");
    vm(&eu, "web", 48 * MIB, 3);
    vm(&eu, "db", 4 * MIB, 4);
    let c = sb.start_coordinator_with("coord", &["--heartbeat-ms", "300"]);
    let addr = c.addr.clone();
    // Each new chunk waits 400 ms: web's 12 chunks take a few seconds.
    let _agent = sb.start_agent_at(&c.addr, "eu", &eu, "eu-1", &["--capacity", "1"], &[(DELAY, "400")]);
    wait_until(Duration::from_secs(30), "the agent to attach", || inventory_len(&sb, &c) == 2);
    let repo = sb.path("repo");
    let first = submit(&sb, &c, &["web"], &repo);
    let second = submit(&sb, &c, &["db"], &repo);
    wait_until(Duration::from_secs(60), "web to be under way", || task(&sb.job(&c, &first), "web")["bytes_done"].as_u64().unwrap() > 0);
    c.kill();
    // The task finishes while the coordinator is down: its result must wait for the restart,
    // and the restarted coordinator must take it rather than run the task again.
    wait_until(Duration::from_secs(60), "web to finish on the agent", || {
        std::fs::read_to_string(sb.path("eu-1.log")).unwrap().contains("TASK_OUTCOME_SUCCEEDED")
    });
    let c = sb.start_coordinator_with("coord", &["--heartbeat-ms", "300", "--listen", &addr]);
    let mut watcher = sb.spawn(&c.cmd(&["watch", &second, "--output", "json"]), &[]);
    let mut line = String::new();
    BufReader::new(watcher.stdout.as_mut().unwrap()).read_line(&mut line).unwrap();
    assert!(line.contains(&second), "{line}");
    assert_eq!(watcher.wait().unwrap().code(), Some(0), "the second job did not succeed");
    let web = task(&sb.job(&c, &first), "web");
    assert_eq!(web["state"], "succeeded", "{web}");
    let found = points(&sb, "repo");
    assert_eq!(found.iter().filter(|(vm, _)| vm == "web").count(), 1, "duplicate points: {found:?}");
    assert_eq!(found.iter().filter(|(vm, _)| vm == "db").count(), 1, "duplicate points: {found:?}");
    assert_restores(&sb, "repo", web["point"].as_str().unwrap(), &eu.join("web.img"));
}
