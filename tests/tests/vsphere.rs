//! vSphere against govmomi's API simulator (vcsim, default VPX model, TLS with a CA of its own):
//! the inventory read directly and through an agent, how the server's certificate is trusted,
//! and clear errors that never show the password.

use std::time::Duration;

use hyperexport_tests::*;
use serde_json::Value;

const VC_PASSWORD: &str = "Vc-S3cret-pa55";

fn inventory(sb: &Sandbox, vc: &Vcsim, extra: &[&str]) -> Vec<Value> {
    let mut a = args(&["vms", "--source", &vc.source(""), "--output", "json"]);
    a.extend(vc.access());
    a.extend(args(extra));
    serde_json::from_str::<Value>(&sb.ok(&a).stdout).unwrap().as_array().unwrap().clone()
}

fn names(vms: &[Value]) -> Vec<String> {
    vms.iter().map(|v| v["name"].as_str().unwrap().to_string()).collect()
}

#[test]
fn the_inventory_lists_every_vm_of_the_simulator_with_its_disks_and_filters_work() {
    let sb = Sandbox::new();
    let vc = sb.start_vcsim("vc", VC_PASSWORD);
    let all = inventory(&sb, &vc, &[]);
    assert_eq!(all.len(), vc.vms, "as many VMs as the simulator's model has: {:?}", names(&all));
    assert!(vc.vms >= 2, "the VPX model has VMs");
    for vm in &all {
        assert_eq!(vm["folder"], "/DC0/vm", "{vm}");
        assert_eq!(vm["power_state"], "on", "{vm}");
        assert!(vm["cpus"].as_u64().unwrap() >= 1 && vm["memory_mb"].as_u64().unwrap() > 0, "{vm}");
        assert!(!vm["guest_os"].as_str().unwrap().is_empty(), "{vm}");
        assert!(!vm["networks"].as_array().unwrap().is_empty(), "{vm}");
        let disks = vm["disks"].as_array().unwrap();
        assert!(!disks.is_empty(), "{vm}");
        for d in disks {
            let file = d["file"].as_str().unwrap();
            let name = vm["name"].as_str().unwrap();
            assert!(file.starts_with(&format!("[{}] {name}/", d["datastore"].as_str().unwrap())), "{d}");
            assert!(d["capacity_bytes"].as_u64().unwrap() > 0, "{d}");
        }
    }
    // Filters: by name, by folder (the datacenter in the URL too), by power state.
    let h0 = inventory(&sb, &vc, &["--name", "*_H0_*"]);
    let expected: Vec<String> = names(&all).into_iter().filter(|n| n.contains("_H0_")).collect();
    assert!(!expected.is_empty() && expected.len() < all.len());
    assert_eq!(names(&h0), expected);
    assert_eq!(inventory(&sb, &vc, &["--folder", "/DC0/vm"]).len(), all.len());
    assert!(inventory(&sb, &vc, &["--folder", "/DC9"]).is_empty());
    assert_eq!(inventory(&sb, &vc, &["--power-state", "on"]).len(), all.len());
    assert!(inventory(&sb, &vc, &["--power-state", "off"]).is_empty());
    let mut a = args(&["vms", "--source", &vc.source("/DC9"), "--output", "json"]);
    a.extend(vc.access());
    assert_eq!(sb.ok(&a).stdout.trim(), "[]", "a datacenter in the URL limits the listing");
}

#[test]
fn the_certificate_is_pinned_or_checked_against_a_ca_and_never_silently_trusted() {
    let sb = Sandbox::new();
    let vc = sb.start_vcsim("vc", VC_PASSWORD);
    let pw = vc.password_file.display().to_string();
    let run = |trust: &[&str]| {
        let mut a = args(&["vms", "--source", &vc.source(""), "--vsphere-password-file", &pw]);
        a.extend(args(trust));
        sb.run(&a)
    };
    assert_eq!(run(&["--vsphere-thumbprint", &vc.thumbprint]).code, Some(0));
    assert_eq!(run(&["--vsphere-insecure"]).code, Some(0));
    let mut wrong = vc.thumbprint.clone().into_bytes();
    wrong[0] = if wrong[0] == b'0' { b'1' } else { b'0' };
    run(&["--vsphere-thumbprint", std::str::from_utf8(&wrong).unwrap()]).assert_clean_failure("not the pinned");
    run(&[]).assert_clean_failure("say how to trust the certificate");
    // Its own CA is trusted; another simulator's CA, which did not sign it, is not.
    assert_eq!(run(&["--vsphere-ca", &vc.ca.display().to_string()]).code, Some(0));
    let other = sb.start_vcsim("vc2", VC_PASSWORD);
    run(&["--vsphere-ca", &other.ca.display().to_string()]).assert_clean_failure("TLS with vSphere");
}

#[test]
fn bad_logins_and_unreachable_servers_are_clear_errors_and_the_password_is_never_shown() {
    let sb = Sandbox::new();
    let vc = sb.start_vcsim("vc", VC_PASSWORD);
    let ca = vc.ca.display().to_string();
    std::fs::write(sb.path("wrong"), "not-the-password\n").unwrap();
    let wrong = sb.path("wrong").display().to_string();
    let mut outputs = String::new();
    let mut failing = |source: &str, extra: &[&str], needle: &str| {
        let mut a = args(&["vms", "--source", source, "--vsphere-ca", &ca]);
        a.extend(args(extra));
        // Debug logs on: no level may print the password.
        let r = sb.run_with_env(&a, &[("RUST_LOG", "debug")]);
        r.assert_clean_failure(needle);
        outputs.push_str(&r.stdout);
        outputs.push_str(&r.stderr);
    };
    failing(&vc.source(""), &["--vsphere-password-file", &wrong], "refused the login of user \"user\"");
    let free = free_port();
    failing(&format!("vsphere://user@127.0.0.1:{free}"), &["--vsphere-password-file", &wrong], "cannot reach vSphere at 127.0.0.1");
    failing(&format!("vsphere://user:{VC_PASSWORD}@{}", vc.addr), &[], "a password does not go in the URL");
    failing(&vc.source(""), &[], "no vSphere password");
    assert!(!outputs.contains(VC_PASSWORD) && !outputs.contains("not-the-password"), "a password was printed:\n{outputs}");

    // An agent serving the simulator: its VMs reach the coordinator's inventory; a VM whose
    // disk file is gone fails clearly and leaves no snapshot; no log holds the password.
    let c = sb.start_coordinator_with("coord", &["--heartbeat-ms", "300"]);
    let _agent = sb.start_vsphere_agent(&c, "eu", &vc, "/DC0", "agent", &[("RUST_LOG", "debug")]);
    let mut listed = Vec::new();
    wait_until(Duration::from_secs(30), "the simulator's VMs in the coordinator's inventory", || {
        let out = sb.run(&c.cmd(&["vms", "--provider", "vsphere", "--output", "json"]));
        listed = serde_json::from_str::<Value>(&out.stdout).map(|v| v.as_array().cloned().unwrap_or_default()).unwrap_or_default();
        listed.len() == vc.vms
    });
    assert!(listed.iter().all(|v| v["provider"] == "vsphere" && v["power_state"] == "on" && v["disks"].as_u64() >= Some(1)), "{listed:?}");
    let ds = &vc.datastores.iter().find(|(n, _)| n == "LocalDS_0").expect("LocalDS_0").1;
    std::fs::remove_file(ds.join("DC0_H0_VM1/disk1.vmdk")).expect("the simulator keeps DC0_H0_VM1's disk there");
    let target = format!("file://{}", sb.path("repo").display());
    let job = sb.ok(&c.cmd(&["export", "--vm", "DC0_H0_VM1", "--to", &target])).stdout.trim().to_string();
    assert_ne!(sb.run(&c.cmd(&["watch", &job])).code, Some(0), "the export of a VM without its disk file fails");
    let failed = sb.job(&c, &job).to_string();
    assert!(failed.contains("DC0_H0_VM1/disk1.vmdk is not on the datastore"), "{failed}");
    wait_until(Duration::from_secs(10), "the failed export's snapshot to go", || snapshot_names(&sb, &vc, "DC0_H0_VM1").is_empty());
    sb.run(&c.cmd(&["export", "--vm", "no-such-vm", "--to", &target])).assert_clean_failure("no-such-vm");
    drop(c);
    let logs: String =
        ["coord.log", "agent.log", "vc.log"].iter().map(|f| std::fs::read_to_string(sb.path(f)).unwrap_or_default()).collect();
    assert!(!logs.contains(VC_PASSWORD), "a log holds the vSphere password");
}

/// The names of `vm`'s snapshots, depth first.
fn snapshot_names(sb: &Sandbox, vc: &Vcsim, vm: &str) -> Vec<String> {
    let mut a = args(&["snapshots", "list", "--source", &vc.source(""), "--vm", vm, "--output", "json"]);
    a.extend(vc.access());
    fn walk(nodes: &Value, out: &mut Vec<String>) {
        for n in nodes.as_array().into_iter().flatten() {
            out.push(n["name"].as_str().unwrap_or("").to_string());
            walk(&n["children"], out);
        }
    }
    let mut out = Vec::new();
    walk(&serde_json::from_str(&sb.ok(&a).stdout).unwrap(), &mut out);
    out
}

fn snapshots(sb: &Sandbox, vc: &Vcsim, command: &str, vm: &str, name: &str) -> Run {
    let mut a = args(&["snapshots", command, "--source", &vc.source(""), "--vm", vm, "--name", name]);
    a.extend(vc.access());
    sb.run(&a)
}

#[test]
fn snapshot_trees_round_trip_and_cleanup_removes_only_what_exports_left() {
    let sb = Sandbox::new();
    let vc = sb.start_vcsim("vc", VC_PASSWORD);
    let vm = "DC0_H0_VM0";
    assert_eq!(snapshots(&sb, &vc, "create", vm, "base").code, Some(0));
    assert_eq!(snapshots(&sb, &vc, "create", vm, "later").code, Some(0));
    let mut a = args(&["snapshots", "list", "--source", &vc.source(""), "--vm", vm, "--output", "json"]);
    a.extend(vc.access());
    let tree: Value = serde_json::from_str(&sb.ok(&a).stdout).unwrap();
    assert_eq!(tree[0]["name"], "base");
    assert_eq!(tree[0]["children"][0]["name"], "later", "a snapshot taken after another is its child: {tree}");
    assert_eq!(snapshots(&sb, &vc, "revert", vm, "base").code, Some(0));
    assert_eq!(snapshots(&sb, &vc, "remove", vm, "later").code, Some(0));
    assert_eq!(snapshot_names(&sb, &vc, vm), ["base"]);
    snapshots(&sb, &vc, "remove", vm, "later").assert_clean_failure("has no snapshot named \"later\"");
    snapshots(&sb, &vc, "create", "no-such-vm", "x").assert_clean_failure("no VM named \"no-such-vm\"");

    // What an interrupted export leaves: cleanup removes it, and nothing of the user's.
    assert_eq!(snapshots(&sb, &vc, "create", vm, "hyperexport-orphan").code, Some(0));
    assert_eq!(snapshots(&sb, &vc, "create", "DC0_H0_VM1", "hyperexport-orphan-2").code, Some(0));
    let mut cleanup = args(&["snapshots", "cleanup", "--source", &vc.source(""), "--output", "json"]);
    cleanup.extend(vc.access());
    let removed: Value = serde_json::from_str(&sb.ok(&cleanup).stdout).unwrap();
    assert_eq!(removed.as_array().unwrap().len(), 2, "{removed}");
    assert_eq!(snapshot_names(&sb, &vc, vm), ["base"]);
    assert!(snapshot_names(&sb, &vc, "DC0_H0_VM1").is_empty());
}

const MIB: usize = 1 << 20;

/// Starts a coordinator and `agents` agents serving the simulator's DC0, each with `env`.
fn cluster(sb: &Sandbox, vc: &Vcsim, agents: &[(&str, &[(&str, &str)])]) -> (Coordinator, Vec<Service>) {
    let c = sb.start_coordinator_with("coord", &["--heartbeat-ms", "300"]);
    let started = agents.iter().map(|(data, env)| sb.start_vsphere_agent(&c, "eu", vc, "/DC0", data, env)).collect();
    (c, started)
}

#[test]
fn exporting_a_powered_on_vm_snapshots_it_restores_bit_identical_and_removes_the_snapshot() {
    let sb = Sandbox::new();
    let vc = sb.start_vcsim("vc", VC_PASSWORD);
    let disk = random_bytes(12 * MIB + 12345, 21);
    vc.upload("DC0_H0_VM0/disk1.vmdk", &disk);
    // Slow enough to see the snapshot while the export runs.
    let slow: &[(&str, &str)] = &[("HYPEREXPORT_TEST_CHUNK_DELAY_MS", "400")];
    let (c, _agents) = cluster(&sb, &vc, &[("agent", slow)]);
    wait_until(Duration::from_secs(30), "the agent's inventory", || sb.run(&c.cmd(&["vms"])).stdout.contains("DC0_H0_VM0"));
    let target = format!("file://{}", sb.path("repo").display());
    let job = sb.ok(&c.cmd(&["export", "--vm", "DC0_H0_VM0", "--to", &target])).stdout.trim().to_string();
    let task = sb.job(&c, &job)["tasks"][0]["id"].as_str().unwrap().to_string();
    wait_until(Duration::from_secs(30), "the export's snapshot", || {
        snapshot_names(&sb, &vc, "DC0_H0_VM0") == [format!("hyperexport-{task}")]
    });
    sb.ok(&c.cmd(&["watch", &job]));
    wait_until(Duration::from_secs(10), "the export's snapshot to go", || snapshot_names(&sb, &vc, "DC0_H0_VM0").is_empty());
    let point = sb.job(&c, &job)["tasks"][0]["point"].as_str().unwrap().to_string();
    let mut restore = args(&["restore", &point, "--to", &sb.path("out").display().to_string()]);
    restore.extend(sb.repo_args("repo"));
    sb.ok(&restore);
    assert!(std::fs::read(sb.path("out")).unwrap() == disk, "the restored disk equals the uploaded content");
    // The simulator has no changed block tracking: the result says changes were found by content.
    let stats = sb.job(&c, &job)["tasks"][0]["stats"].clone();
    assert_eq!(stats["changes_found_by"], "content", "{stats}");
    assert!(stats["note"].as_str().unwrap().contains("no changed block tracking for this VM"), "{stats}");
    // Read through the datastore interface by ranges.
    let reads: Vec<Request> =
        vc.requests().into_iter().filter(|r| r.method == "GET" && r.path.ends_with("/DC0_H0_VM0/disk1.vmdk")).collect();
    assert!(!reads.is_empty() && reads.iter().all(|r| r.bytes().is_some()), "every read has a Range: {reads:?}");
    // Several ranges of the disk were read at once (the read-ahead).
    assert!(reads.iter().any(|r| r.inflight >= 2), "no two reads in flight at once: {reads:?}");
}

#[test]
fn a_killed_agent_s_export_resumes_elsewhere_from_the_same_snapshot_with_range_reads() {
    let sb = Sandbox::new();
    let vc = sb.start_vcsim("vc", VC_PASSWORD);
    let size = 32 * MIB;
    let disk = random_bytes(size, 22);
    vc.upload("DC0_H0_VM0/disk1.vmdk", &disk);
    // The first agent stalls after 3 of the disk's 8 chunks.
    let stall: &[(&str, &str)] = &[("HYPEREXPORT_TEST_STALL_AFTER_CHUNKS", "3")];
    let (c, mut agents) = cluster(&sb, &vc, &[("first", stall)]);
    wait_until(Duration::from_secs(30), "the agent's inventory", || sb.run(&c.cmd(&["vms"])).stdout.contains("DC0_H0_VM0"));
    let target = format!("file://{}", sb.path("repo").display());
    let job = sb.ok(&c.cmd(&["export", "--vm", "DC0_H0_VM0", "--to", &target])).stdout.trim().to_string();
    let mut checkpoint = 0;
    wait_until(Duration::from_secs(60), "a checkpoint", || {
        checkpoint = sb.job(&c, &job)["tasks"][0]["checkpoint_bytes"].as_u64().unwrap_or(0);
        checkpoint > 0
    });
    agents.push(sb.start_vsphere_agent(&c, "eu", &vc, "/DC0", "second", &[]));
    let second = {
        let mut id = String::new();
        wait_until(Duration::from_secs(30), "the second agent", || {
            id = sb.agent_id("second");
            !id.is_empty()
        });
        id
    };
    let before = vc.requests().len();
    agents.remove(0).kill();
    wait_until(Duration::from_secs(30), "the task on the second agent", || sb.job(&c, &job)["tasks"][0]["agent"] == second.as_str());
    sb.ok(&c.cmd(&["watch", &job]));
    let t = sb.job(&c, &job)["tasks"][0].clone();
    assert_eq!(t["attempt"], 2);
    // The second attempt read the disk from the checkpoint on, by ranges: no data read before it.
    let chunk = 4 * MIB as u64;
    let reads: Vec<u64> = vc.requests()[before..]
        .iter()
        .filter(|r| r.method == "GET" && r.path.ends_with("/DC0_H0_VM0/disk1.vmdk"))
        .filter_map(Request::bytes)
        .filter(|(a, b)| b - a + 1 == chunk)
        .map(|(a, _)| a)
        .collect();
    eprintln!("checkpoint at {checkpoint}; the second attempt read chunks at {reads:?}");
    assert!(!reads.is_empty(), "the second attempt read chunks by ranges");
    assert!(reads.iter().all(|a| *a >= checkpoint), "chunk reads from {:?} although the checkpoint was at {checkpoint}", reads);
    assert!(t["bytes_read"].as_u64().unwrap() < size as u64, "the resumed attempt read the whole disk again");
    // One snapshot served both attempts, and it is gone.
    let second_log = std::fs::read_to_string(sb.path("second.log")).unwrap_or_default();
    assert!(second_log.contains("reading the snapshot an earlier attempt took"), "{second_log}");
    wait_until(Duration::from_secs(10), "the snapshot to go", || snapshot_names(&sb, &vc, "DC0_H0_VM0").is_empty());
    let point = t["point"].as_str().unwrap().to_string();
    let mut restore = args(&["restore", &point, "--to", &sb.path("out").display().to_string()]);
    restore.extend(sb.repo_args("repo"));
    sb.ok(&restore);
    assert!(std::fs::read(sb.path("out")).unwrap() == disk, "the restored disk equals the uploaded content");
}

#[test]
fn a_cancelled_export_leaves_no_snapshot() {
    let sb = Sandbox::new();
    let vc = sb.start_vcsim("vc", VC_PASSWORD);
    vc.upload("DC0_H0_VM0/disk1.vmdk", &random_bytes(16 * MIB, 23));
    let slow: &[(&str, &str)] = &[("HYPEREXPORT_TEST_CHUNK_DELAY_MS", "1000")];
    let (c, _agents) = cluster(&sb, &vc, &[("agent", slow)]);
    wait_until(Duration::from_secs(30), "the agent's inventory", || sb.run(&c.cmd(&["vms"])).stdout.contains("DC0_H0_VM0"));
    let target = format!("file://{}", sb.path("repo").display());
    let job = sb.ok(&c.cmd(&["export", "--vm", "DC0_H0_VM0", "--to", &target])).stdout.trim().to_string();
    wait_until(Duration::from_secs(30), "the export's snapshot", || !snapshot_names(&sb, &vc, "DC0_H0_VM0").is_empty());
    sb.ok(&c.cmd(&["cancel", &job]));
    wait_until(Duration::from_secs(30), "the cancelled export's snapshot to go", || snapshot_names(&sb, &vc, "DC0_H0_VM0").is_empty());
    assert_eq!(sb.job(&c, &job)["state"], "cancelled");
}

#[test]
fn the_ova_of_an_exported_vm_imports_back_through_import_vapp_with_the_same_hardware() {
    let sb = Sandbox::new();
    // Not the model's default hardware, so that a default could not pass for a copy.
    let vc = sb.start_vcsim_with("vc", VC_PASSWORD, &["-hardware", "DC0_H0_VM0:2:256"]);
    let source = inventory(&sb, &vc, &["--name", "DC0_H0_VM0"]);
    assert_eq!((source[0]["cpus"].as_u64(), source[0]["memory_mb"].as_u64()), (Some(2), Some(256)), "{source:?}");
    let disk = random_bytes(6 * MIB, 24);
    vc.upload("DC0_H0_VM0/disk1.vmdk", &disk);
    let (c, _agents) = cluster(&sb, &vc, &[("agent", &[])]);
    wait_until(Duration::from_secs(30), "the agent's inventory", || sb.run(&c.cmd(&["vms"])).stdout.contains("DC0_H0_VM0"));
    let target = format!("file://{}", sb.path("repo").display());
    let job = sb.ok(&c.cmd(&["export", "--vm", "DC0_H0_VM0", "--to", &target])).stdout.trim().to_string();
    sb.ok(&c.cmd(&["watch", &job]));
    let point = sb.job(&c, &job)["tasks"][0]["point"].as_str().unwrap().to_string();
    let ova = sb.path("vm.ova");
    let mut restore = args(&["restore", &point, "--to", &ova.display().to_string(), "--format", "ova"]);
    restore.extend(sb.repo_args("repo"));
    sb.ok(&restore);
    let imported = vc.import_ova(&ova, "DC0_H0_VM0-back");
    assert_eq!(imported, "imported DC0_H0_VM0-back cpus 2 memory_mb 256 disks 1");
    let back = inventory(&sb, &vc, &["--name", "DC0_H0_VM0-back"]);
    assert_eq!(back.len(), 1, "the imported VM is in the inventory");
}
