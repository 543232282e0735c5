//! The coordinator's job API through the real binary: submit, list, watch, cancel, restarts, and
//! clear errors for bad requests. An agent whose exports stall keeps the jobs running.

use std::io::{BufRead, BufReader};
use std::time::Duration;

use hyperexport_tests::*;

/// A coordinator and one agent serving `vms` (small images) whose exports stall at once, so
/// that tasks stay running until cancelled.
fn stalled_cluster(sb: &Sandbox, vms: &[&str]) -> (Coordinator, Service) {
    let dir = sb.path("vms");
    std::fs::create_dir_all(&dir).unwrap();
    for (i, vm) in vms.iter().enumerate() {
        write_image(&dir.join(format!("{vm}.img")), 1 << 20, &[(0, random_bytes(1 << 20, i as u64))]);
    }
    let c = sb.start_coordinator("coord");
    let agent = sb.start_agent_at(&c.addr, "eu", &dir, "agent", &[], &[("HYPEREXPORT_TEST_STALL_AFTER_CHUNKS", "0")]);
    let listed = || sb.ok(&with(&c, &["vms", "--output", "json"])).stdout.matches("\"name\"").count();
    wait_until(Duration::from_secs(30), "the agent to report its VMs", || listed() == vms.len());
    (c, agent)
}

fn with(c: &Coordinator, parts: &[&str]) -> Vec<String> {
    let mut a = args(parts);
    a.extend(c.flag());
    a
}

#[test]
fn jobs_are_accepted_listed_cancelled_and_survive_a_crash() {
    let sb = Sandbox::new();
    let (c, _agent) = stalled_cluster(&sb, &["web", "db"]);
    let target = format!("file://{}", sb.path("repo").display());
    let job = sb.ok(&with(&c, &["export", "--vm", "web", "--vm", "db", "--to", &target, "--priority", "7"])).stdout.trim().to_string();
    assert_eq!(job.len(), 16, "job id: {job:?}");
    wait_until(Duration::from_secs(30), "both tasks to run", || sb.job(&c, &job)["state"] == "running");
    let listed = sb.job(&c, &job);
    assert_eq!(listed["priority"], 7);
    assert_eq!(listed["tasks"].as_array().unwrap().iter().map(|t| t["vm"].as_str().unwrap()).collect::<Vec<_>>(), ["web", "db"]);

    // kill -9 and start again on the same data (and address, for the agent): the job is still
    // there, with the same tasks on the same agent.
    let addr = c.addr.clone();
    c.kill();
    let c = sb.start_coordinator_with("coord", &["--listen", &addr]);
    let again = sb.job(&c, &job);
    for field in ["id", "priority", "target", "created_unix_ms"] {
        assert_eq!(again[field], listed[field], "{field} changed across a crash");
    }
    for (a, b) in again["tasks"].as_array().unwrap().iter().zip(listed["tasks"].as_array().unwrap()) {
        assert_eq!((&a["id"], &a["vm"], &a["agent"], &a["attempt"]), (&b["id"], &b["vm"], &b["agent"], &b["attempt"]));
    }

    // Two watchers, then a cancel: both see the same final state.
    let watchers: Vec<_> = (0..2)
        .map(|_| {
            let mut w = sb.spawn(&with(&c, &["watch", &job, "--output", "json"]), &[]);
            let mut first = String::new();
            BufReader::new(w.stdout.as_mut().unwrap()).read_line(&mut first).unwrap();
            assert!(first.contains(&job), "{first}");
            w
        })
        .collect();
    let cancelled = sb.ok(&with(&c, &["cancel", &job, "--output", "json"])).result();
    assert_eq!(cancelled["state"], "cancelled");
    for w in watchers {
        let out = w.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(1), "watch exits non-zero for a job that did not succeed");
        let last = String::from_utf8(out.stdout).unwrap().lines().last().map(str::to_string).unwrap();
        let last: serde_json::Value = serde_json::from_str(&last).unwrap();
        assert_eq!(last["job"]["state"], "cancelled");
    }
    sb.run(&with(&c, &["cancel", &job])).assert_clean_failure("already finished (JOB_STATE_CANCELLED)");
    assert_eq!(c.terminate(), Some(0), "SIGTERM stops the coordinator cleanly");
    assert!(std::fs::read_to_string(sb.path("coord.log")).unwrap().contains("coordinator stopped"));
}

#[test]
fn bad_requests_and_unreachable_coordinators_get_clear_errors() {
    let sb = Sandbox::new();
    let c = sb.start_coordinator("coord");
    let cases: [(&[&str], &str); 8] = [
        (&["export", "--vm", "ghost", "--to", "file:///r"], "VM \"ghost\" is in the inventory of no live agent"),
        (&["export", "--vm", "ghost", "--to", "file:///r", "--region", "mars"], "no live agent in region \"mars\""),
        (&["export", "--vm", "a", "--to", "ftp://host/x"], "is neither a file:///absolute/path URL"),
        (&["export", "--vm", "a", "--to", "file:///r/../etc"], "absolute path without `..`"),
        (&["export", "--vm", "a", "--vm", "a", "--to", "file:///r"], "named twice"),
        (&["export", "--vm", "a", "--to", "file:///r", "--priority", "101"], "priority 101 is outside 0-100"),
        (&["cancel", "0123456789abcdef"], "no job with id"),
        (&["watch", "nope"], "no job with id"),
    ];
    for (a, needle) in cases {
        let r = sb.run(&with(&c, a));
        r.assert_clean_failure(needle);
    }
    sb.run(&args(&["export", "--vm", "a"])).assert_clean_failure("--to TARGET is needed");
    sb.run(&with(&c, &["export", "--vm", "a", "--to", "file:///r", "--compression", "lz4"]))
        .assert_clean_failure("--compression applies to local exports");
    sb.run(&args(&["jobs"])).assert_clean_failure("no coordinator: give --coordinator URL or set HYPEREXPORT_COORDINATOR");
    sb.run(&args(&["jobs", "--coordinator", "127.0.0.1:1"])).assert_clean_failure("cannot reach the coordinator (http://127.0.0.1:1");
    // The environment variable stands for --coordinator.
    let r = sb.run_with_env(&args(&["jobs"]), &[("HYPEREXPORT_COORDINATOR", &c.addr)]);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    // A port already taken is named.
    let taken = sb.run(&args(&["coordinator", "--listen", &c.addr, "--data", sb.path("other").to_str().unwrap()]));
    taken.assert_clean_failure(&format!("cannot listen on {}", c.addr));
}

#[test]
fn sigterm_stops_the_coordinator_even_with_a_watch_open() {
    let sb = Sandbox::new();
    let (c, _agent) = stalled_cluster(&sb, &["idle"]);
    let target = format!("file://{}", sb.path("repo").display());
    let job = sb.ok(&with(&c, &["export", "--vm", "idle", "--to", &target])).stdout.trim().to_string();
    let mut watcher = sb.spawn(&with(&c, &["watch", &job]), &[]);
    let mut first = String::new();
    BufReader::new(watcher.stdout.as_mut().unwrap()).read_line(&mut first).unwrap();
    assert!(first.contains(&job), "{first}");
    assert_eq!(c.terminate(), Some(0), "an open watch must not keep the coordinator from stopping");
    let out = watcher.wait_with_output().unwrap();
    assert_ne!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stderr).contains("shutting down"), "{}", String::from_utf8_lossy(&out.stderr));
}
