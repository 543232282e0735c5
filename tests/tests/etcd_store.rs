//! Coordinators on etcd (Debian `etcd-server`, started by the harness on loopback): state kept in
//! etcd survives the coordinator, a second coordinator takes over only once the first one's
//! leader lease has expired and does so with a newer term (which agents follow), and an
//! embedded store moves into etcd with `store migrate`.

use std::path::Path;
use std::time::{Duration, Instant};

use hyperexport_tests::*;
use serde_json::Value;

const TTL: &str = "2";

/// A VM of one random disk in `dir`.
fn vm(dir: &Path, name: &str, seed: u64) {
    std::fs::create_dir_all(dir).unwrap();
    write_image(&dir.join(format!("{name}.img")), 3 << 20, &[(0, random_bytes(3 << 20, seed))]);
}

/// Submits an export of `vm` and waits for it; returns the job id.
fn export(sb: &Sandbox, c: &Coordinator, vm: &str) -> String {
    wait_until(Duration::from_secs(30), "the VM in the inventory", || sb.ok(&c.cmd(&["vms"])).stdout.contains(vm));
    let target = format!("file://{}", sb.path("repo").display());
    let id = sb.ok(&c.cmd(&["export", "--vm", vm, "--to", &target])).stdout.trim().to_string();
    sb.ok(&c.cmd(&["watch", &id]));
    id
}

fn job_state(sb: &Sandbox, c: &Coordinator, id: &str) -> String {
    sb.job(c, id)["state"].as_str().unwrap_or("missing").to_string()
}

#[test]
fn state_in_etcd_outlives_the_coordinator_and_the_next_leader_has_a_newer_term() {
    let sb = Sandbox::new();
    let etcd = sb.start_etcd("etcd");
    let vms = sb.path("vms");
    vm(&vms, "web", 1);
    vm(&vms, "db", 2);
    let store = etcd.url();
    let c = sb.start_coordinator_with("c1", &["--store", &store, "--etcd-ttl", TTL, "--heartbeat-ms", "300"]);
    let _agent = sb.start_agent(&c, "eu", &vms, "agent", &[]);
    let first = export(&sb, &c, "web");
    assert_eq!(job_state(&sb, &c, &first), "succeeded");
    sb.ok(&c.cmd(&["bandwidth", "set", "--global", "50M"]));

    // A crash: the next coordinator waits for the lease to expire, then leads with a newer term.
    c.kill();
    let started = Instant::now();
    let c2 = sb.start_coordinator_with("c2", &["--store", &store, "--etcd-ttl", TTL, "--heartbeat-ms", "300"]);
    let took = started.elapsed();
    eprintln!("the second coordinator led {took:?} after the first was killed");
    // Not before the first one's lease (2 s, renewed every 2/3 s) could expire.
    assert!(took >= Duration::from_secs(1), "took over after {took:?}, while the killed leader's lease still ran");
    assert_eq!(job_state(&sb, &c2, &first), "succeeded", "the job is still there");
    let show: Value = serde_json::from_str(&sb.ok(&c2.cmd(&["bandwidth", "show", "--output", "json"])).stdout).unwrap();
    assert_eq!(show["result"]["config"]["global"], "50M", "the bandwidth configuration is still there");

    // The agent follows the new coordinator (same address? no: it was started with the first's
    // address, so a new agent attaches to the second one) and accepts its newer term.
    let _agent2 = sb.start_agent(&c2, "eu", &vms, "agent2", &[]);
    let second = export(&sb, &c2, "db");
    assert_eq!(job_state(&sb, &c2, &second), "succeeded");
    let (t1, t2) = (sb.accepted_terms("agent"), sb.accepted_terms("agent2"));
    assert_eq!(t1.len(), 1, "agent accepted one assignment: {t1:?}");
    assert_eq!(t2.len(), 1, "agent2 accepted one assignment: {t2:?}");
    assert!(t2[0] > t1[0] && t1[0] > 0, "terms {t1:?} then {t2:?}");
}

#[test]
fn a_record_changed_behind_the_leader_s_back_is_not_overwritten() {
    let sb = Sandbox::new();
    let etcd = sb.start_etcd("etcd");
    let c = sb.start_coordinator_with("coord", &["--store", &etcd.url(), "--etcd-ttl", TTL, "--heartbeat-ms", "300"]);
    sb.ok(&c.cmd(&["bandwidth", "set", "--global", "50M"]));
    // Another writer changes the record (same value, a newer revision): the leader's next
    // write of it is refused, not applied over the change.
    assert!(etcd.touch("/hyperexport/v1/bandwidth/config"));
    sb.run(&c.cmd(&["bandwidth", "set", "--global", "30M"])).assert_clean_failure("changed in etcd since this coordinator read it");
    let show: Value = serde_json::from_str(&sb.ok(&c.cmd(&["bandwidth", "show", "--output", "json"])).stdout).unwrap();
    assert_eq!(show["result"]["config"]["global"], "50M", "the refused configuration is not in force");
    // Tried again, the leader reads the record afresh and writes it; it still leads.
    sb.ok(&c.cmd(&["bandwidth", "set", "--global", "30M"]));
    let show: Value = serde_json::from_str(&sb.ok(&c.cmd(&["bandwidth", "show", "--output", "json"])).stdout).unwrap();
    assert_eq!(show["result"]["config"]["global"], "30M");
}

#[test]
fn a_job_changed_behind_the_scheduler_s_back_stops_it_and_the_coordinator_leads_again_from_etcd() {
    let sb = Sandbox::new();
    let etcd = sb.start_etcd("etcd");
    let vms = sb.path("vms");
    vm(&vms, "web", 5);
    let coordinator = sb.spawn_coordinator(
        "coord",
        &format!("127.0.0.1:{}", free_port()),
        &["--store", &etcd.url(), "--etcd-ttl", TTL, "--heartbeat-ms", "300"],
    );
    wait_until(Duration::from_secs(30), "the coordinator to lead", || coordinator.serving());
    let at = args(&["--coordinator", &coordinator.addr]);
    let slow = [("HYPEREXPORT_TEST_CHUNK_DELAY_MS", "700")];
    let _agent = sb.start_agent_at(&coordinator.addr, "eu", &vms, "agent", &[], &slow);
    wait_until(Duration::from_secs(30), "the VM in the inventory", || {
        sb.run(&[args(&["vms"]), at.clone()].concat()).stdout.contains("web")
    });
    let target = format!("file://{}", sb.path("repo").display());
    let id = sb.ok(&[args(&["export", "--vm", "web", "--to", &target]), at.clone()].concat()).stdout.trim().to_string();
    let state = || {
        let r = sb.run(&[args(&["jobs", "--output", "json"]), at.clone()].concat());
        serde_json::from_str::<Value>(&r.stdout)
            .ok()
            .and_then(|j| j.as_array()?.iter().find(|j| j["id"] == id.as_str()).cloned())
            .unwrap_or(Value::Null)
    };
    wait_until(Duration::from_secs(30), "the task to run", || state()["tasks"][0]["state"] == "running");
    // Another writer changes the job's record: the scheduler's next write of it is refused.
    assert!(etcd.touch(&format!("/hyperexport/v1/jobs/{id}")));
    wait_until(Duration::from_secs(60), "the job to succeed after the coordinator led again", || state()["state"] == "succeeded");
    let log = std::fs::read_to_string(sb.path("coord.log")).unwrap_or_default();
    assert!(log.contains("a record changed in etcd since this coordinator read it"), "the conflict is in the log:\n{log}");
    assert!(log.contains("stepping down to stand by"), "{log}");
    assert_eq!(point_count(&sb.path("repo")), 1, "one point");
}

#[test]
fn an_embedded_store_moves_into_etcd_once() {
    let sb = Sandbox::new();
    let vms = sb.path("vms");
    vm(&vms, "web", 3);
    let c = sb.start_coordinator_with("coord", &["--heartbeat-ms", "300"]);
    let agent = sb.start_agent(&c, "eu", &vms, "agent", &[]);
    let id = export(&sb, &c, "web");
    sb.ok(&c.cmd(&[
        "dr",
        "policy",
        "set",
        "gold",
        "--vms",
        "nothing-*",
        "--target",
        "file:///srv/r",
        "--region",
        "b",
        "--rpo",
        "1h",
        "--interval",
        "1h",
    ]));
    assert_eq!(c.terminate(), Some(0));
    drop(agent);

    let etcd = sb.start_etcd("etcd");
    let migrate = args(&["store", "migrate", "--from", sb.path("coord").to_str().unwrap(), "--to", &etcd.url(), "--output", "json"]);
    let moved = sb.ok(&migrate).result();
    assert_eq!((moved["jobs"].as_u64(), moved["policies"].as_u64()), (Some(1), Some(1)), "{moved}");
    // Twice: refused, nothing overwritten.
    sb.run(&migrate).assert_clean_failure("already holds");
    let missing = args(&["store", "migrate", "--from", sb.path("nowhere").to_str().unwrap(), "--to", &etcd.url()]);
    sb.run(&missing).assert_clean_failure("holds no coordinator store");

    let c = sb.start_coordinator_with("c-etcd", &["--store", &etcd.url(), "--etcd-ttl", TTL]);
    assert_eq!(job_state(&sb, &c, &id), "succeeded");
    let policies = sb.ok(&c.cmd(&["dr", "policy", "list"])).stdout;
    assert!(policies.contains("gold"), "{policies}");
}

#[test]
fn bad_etcd_options_are_named() {
    let sb = Sandbox::new();
    for (flags, needle) in [
        (vec!["--store", "http://127.0.0.1:2379"], "etcd://"),
        (vec!["--store", "etcd://nohost"], "HOST:PORT"),
        (vec!["--store", "etcd://127.0.0.1:1", "--etcd-ttl", "1"], "--etcd-ttl"),
        (vec!["--store", "etcd://127.0.0.1:1", "--etcd-prefix", "x"], "--etcd-prefix"),
    ] {
        let mut a = args(&["coordinator", "--listen", "127.0.0.1:0"]);
        a.extend(args(&flags));
        sb.run(&a).assert_clean_failure(needle);
    }
    // Listening on every address, a coordinator must say where the others reach it.
    let p = |rel: &str| sb.path(rel).display().to_string();
    sb.ok(&args(&["ca", "init", "--dir", &p("ca")]));
    sb.ok(&args(&["ca", "issue", "coord", "--ca", &p("ca"), "--out", &p("coord-tls")]));
    let everywhere = args(&["coordinator", "--listen", "0.0.0.0:0", "--tls", &p("coord-tls"), "--store", "etcd://127.0.0.1:1"]);
    sb.run(&everywhere).assert_clean_failure("--advertise");
    // Nothing listens there: a clear error, not a hang.
    let port = free_port().to_string();
    let a = args(&["coordinator", "--listen", "127.0.0.1:0", "--store", &format!("etcd://127.0.0.1:{port}")]);
    sb.run(&a).assert_clean_failure("etcd");
}

#[test]
fn a_killed_agent_s_task_moves_only_once_its_lease_has_expired() {
    let sb = Sandbox::new();
    let etcd = sb.start_etcd("etcd");
    let vms = sb.path("vms");
    std::fs::create_dir_all(&vms).unwrap();
    write_image(&vms.join("web.img"), 16 << 20, &[(0, random_bytes(16 << 20, 9))]);
    let c = sb.start_coordinator_with("coord", &["--store", &etcd.url(), "--etcd-ttl", TTL, "--heartbeat-ms", "300"]);
    let slow = [("HYPEREXPORT_TEST_CHUNK_DELAY_MS", "1000")];
    let mut agents: Vec<Option<Service>> = ["a", "b"].iter().map(|d| Some(sb.start_agent_at(&c.addr, "eu", &vms, d, &[], &slow))).collect();
    wait_until(Duration::from_secs(30), "both agents", || {
        let list: Value = serde_json::from_str(&sb.ok(&c.cmd(&["vms", "--output", "json"])).stdout).unwrap();
        list.as_array().unwrap().len() == 2
    });
    let target = format!("file://{}", sb.path("repo").display());
    let id = sb.ok(&c.cmd(&["export", "--vm", "web", "--to", &target])).stdout.trim().to_string();
    let task = || sb.job(&c, &id)["tasks"][0].clone();
    wait_until(Duration::from_secs(30), "the task to run", || task()["state"] == "running");
    let first = task()["agent"].as_str().unwrap().to_string();
    let victim = ["a", "b"].iter().position(|d| sb.agent_id(d) == first).expect("one of ours runs it");
    // The agent's key in etcd, held by its lease: leader TTL (2 s) + three heartbeats (0.9 s)
    // + the reattach grace (2 s), rounded up to whole seconds.
    let key = format!("/hyperexport/v1/agents/{first}");
    let lease = etcd.key_lease(&key).expect("the running agent's key is in etcd");
    assert_ne!(lease, 0, "the agent's key is held by a lease");
    assert_eq!(etcd.granted_ttl(lease), Some(5), "the agent's lease TTL");
    agents[victim].take().unwrap().kill();
    let killed = Instant::now();
    let mut expired = None;
    wait_until(Duration::from_secs(30), "the task on the other agent", || {
        // Read the task first: a key still there after the task was seen moved was there when
        // it moved.
        let moved = task()["agent"].as_str().is_some_and(|a| !a.is_empty() && a != first);
        let held = etcd.key_lease(&key).is_some();
        assert!(!(moved && held), "the task moved after {:?} while the killed agent's lease still ran", killed.elapsed());
        if !held && expired.is_none() {
            expired = Some(killed.elapsed());
        }
        moved
    });
    let moved = killed.elapsed();
    eprintln!("the agent's etcd lease expired {expired:?} after its kill; its task moved after {moved:?}");
    // It was renewed at most a heartbeat before the kill, and etcd checks expiry twice a second.
    assert!(moved >= Duration::from_millis(4700), "the task moved after {moved:?}, before the agent's 5 s lease could expire");
    sb.ok(&c.cmd(&["watch", &id]));
    assert_eq!(point_count(&sb.path("repo")), 1);
}

#[test]
fn etcd_over_mutual_tls_keeps_the_state_and_refuses_a_coordinator_without_a_certificate() {
    let sb = Sandbox::new();
    let p = |rel: &str| sb.path(rel).display().to_string();
    sb.ok(&args(&["ca", "init", "--dir", &p("ca")]));
    for node in ["etcd", "coord"] {
        sb.ok(&args(&["ca", "issue", node, "--ca", &p("ca"), "--out", &p(&format!("{node}-tls")), "--san", "127.0.0.1"]));
    }
    let etcd = sb.start_etcd_tls("etcd", &sb.path("etcd-tls/node.pem"), &sb.path("etcd-tls/node-key.pem"), &sb.path("ca/ca.pem"));
    let tls = [
        "--store",
        &etcd.url(),
        "--etcd-ttl",
        TTL,
        "--etcd-ca",
        &p("ca/ca.pem"),
        "--etcd-cert",
        &p("coord-tls/node.pem"),
        "--etcd-key",
        &p("coord-tls/node-key.pem"),
    ]
    .map(String::from);
    let flags: Vec<&str> = tls.iter().map(String::as_str).collect();
    let c = sb.start_coordinator_with("c1", &flags);
    sb.ok(&c.cmd(&["bandwidth", "set", "--global", "30M"]));
    assert_eq!(c.terminate(), Some(0));
    let c = sb.start_coordinator_with("c2", &flags);
    let show: Value = serde_json::from_str(&sb.ok(&c.cmd(&["bandwidth", "show", "--output", "json"])).stdout).unwrap();
    assert_eq!(show["result"]["config"]["global"], "30M", "written and read back over TLS");
    // Without a client certificate etcd refuses the connection: a clear error, not a hang.
    let bare = args(&["coordinator", "--listen", "127.0.0.1:0", "--store", &etcd.url(), "--etcd-ca", &p("ca/ca.pem")]);
    sb.run(&bare).assert_clean_failure("etcd");
}

#[test]
fn etcd_with_authentication_takes_the_coordinator_s_user_and_refuses_a_wrong_password() {
    let sb = Sandbox::new();
    let etcd = sb.start_etcd_with_auth("etcd", "hx", "s3cret pass");
    std::fs::write(sb.path("etcd-password"), "s3cret pass\n").unwrap();
    std::fs::write(sb.path("wrong-password"), "guess\n").unwrap();
    let auth = |file: &str| args(&["--etcd-user", "hx", "--etcd-password-file", &sb.path(file).display().to_string()]);
    let flags = [args(&["--store", &etcd.url(), "--etcd-ttl", TTL, "--heartbeat-ms", "300"]), auth("etcd-password")].concat();
    let c = sb.start_coordinator_with("coord", &flags.iter().map(String::as_str).collect::<Vec<_>>());
    sb.ok(&c.cmd(&["bandwidth", "set", "--global", "40M"]));
    let vms = sb.path("vms");
    vm(&vms, "web", 3);
    let _agent = sb.start_agent(&c, "eu", &vms, "agent", &[]);
    let id = export(&sb, &c, "web");
    assert_eq!(job_state(&sb, &c, &id), "succeeded", "leadership, leases and records work as user hx");
    drop(c);
    for (why, extra, said) in
        [("a wrong password", auth("wrong-password"), "authentication failed"), ("no user", Vec::new(), "user name is empty")]
    {
        let mut a = args(&["coordinator", "--listen", "127.0.0.1:0", "--store", &etcd.url()]);
        a.extend(extra);
        let run = sb.run(&a);
        assert!(run.code.is_some_and(|c| c != 0), "a coordinator with {why} started");
        assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
        assert!(run.stderr.contains("etcd") && run.stderr.contains(said), "with {why}, the error says etcd refused:\n{}", run.stderr);
        eprintln!("with {why}: {}", run.stderr.lines().last().unwrap_or(""));
    }
}
