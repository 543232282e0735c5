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
        let r = sb.run(&a);
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

    // An agent serving the simulator: its VMs reach the coordinator's inventory; exporting one
    // fails clearly (not built yet); no log holds the password.
    let c = sb.start_coordinator_with("coord", &["--heartbeat-ms", "300"]);
    let _agent = sb.start_vsphere_agent(&c, "eu", &vc, "/DC0", "agent");
    let mut listed = Vec::new();
    wait_until(Duration::from_secs(30), "the simulator's VMs in the coordinator's inventory", || {
        let out = sb.run(&c.cmd(&["vms", "--provider", "vsphere", "--output", "json"]));
        listed = serde_json::from_str::<Value>(&out.stdout).map(|v| v.as_array().cloned().unwrap_or_default()).unwrap_or_default();
        listed.len() == vc.vms
    });
    assert!(listed.iter().all(|v| v["provider"] == "vsphere" && v["power_state"] == "on" && v["disks"].as_u64() >= Some(1)), "{listed:?}");
    let vm = listed[0]["name"].as_str().unwrap().to_string();
    let target = format!("file://{}", sb.path("repo").display());
    let job = sb.ok(&c.cmd(&["export", "--vm", &vm, "--to", &target])).stdout.trim().to_string();
    let watched = sb.run(&c.cmd(&["watch", &job, "--output", "json"]));
    assert_ne!(watched.code, Some(0), "the export of a vSphere VM does not succeed yet");
    assert!(sb.job(&c, &job).to_string().contains("not built yet"), "{}", sb.job(&c, &job));
    drop(c);
    let logs: String =
        ["coord.log", "agent.log", "vc.log"].iter().map(|f| std::fs::read_to_string(sb.path(f)).unwrap_or_default()).collect();
    assert!(!logs.contains(VC_PASSWORD), "a log holds the vSphere password");
}
